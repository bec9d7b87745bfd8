//! Every map the kernel programs share with each other and with userspace.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use llmsim_ebpf_common::{
    ConnKey, DROP_REASONS, DropReason, Filter, OriginalDestination, PlainDestination,
    RING_BUFFER_BYTES, RedirectConfig,
};

/// Every record for userspace: data chunks, SNI, connects, execs.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_BYTES, 0);

/// One `u64` per [`DropReason`]: events that could not be delivered.
#[map]
pub static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// Plaintext bytes of a connection that could not be delivered.
#[map]
pub static LOST_BYTES: LruHashMap<ConnKey, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Which processes are reported; index 0 only. Written by userspace.
#[map]
pub static FILTER: Array<Filter> = Array::with_max_entries(1, 0);

/// Traced thread group ids (value unused), for `FilterMode::Tgids`.
#[map]
pub static TARGET_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(65_536, 0);

/// Traced cgroup v2 ids (value unused), for `FilterMode::Cgroups`.
#[map]
pub static TARGET_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1_024, 0);

/// An `SSL_*` call in progress on a thread, from its entry probe to its return probe.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *written` / `size_t *readbytes` of the `_ex` variants, or 0.
    pub out_len: u64,
    pub start_ns: u64,
    pub direction: u32,
    /// Socket fd of a nested read/write syscall, or -1.
    pub fd: i32,
}

/// Calls in progress, keyed by `bpf_get_current_pid_tgid()`.
#[map]
pub static SSL_CALLS: HashMap<u64, SslCall> = HashMap::with_max_entries(16_384, 0);

/// A `connect()` in progress: its fd and user-space `sockaddr *`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingConnect {
    pub fd: u64,
    pub addr: u64,
}

/// Connects in progress, keyed by `bpf_get_current_pid_tgid()`.
#[map]
pub static CONNECTS: HashMap<u64, PendingConnect> = HashMap::with_max_entries(16_384, 0);

/// Destinations whose plaintext is copied from the socket syscalls (value unused).
/// Written by userspace.
#[map]
pub static PLAIN_DESTINATIONS: HashMap<PlainDestination, u8> = HashMap::with_max_entries(256, 0);

/// A traced socket connected to a selected destination.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PlainSocket {
    /// The connection id: [`llmsim_ebpf_common::PLAIN_CONNECTION`] | connect time.
    pub conn: u64,
    /// Nonzero once the client wrote: its first bytes were not a TLS `ClientHello`.
    pub wrote: u64,
}

/// Selected sockets, keyed by `tgid << 32 | fd`.
#[map]
pub static PLAIN_SOCKETS: LruHashMap<u64, PlainSocket> = LruHashMap::with_max_entries(16_384, 0);

/// A read or write syscall in progress on a selected socket: the call as the TLS
/// probes describe one, plus the syscall number, which says where the buffer is.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PlainCall {
    pub call: SslCall,
    pub syscall: u64,
    /// The iovec count of `readv`/`writev` (for `sendmsg`/`recvmsg`, read from the `msghdr`).
    pub iovcnt: u64,
}

/// Syscalls in progress on selected sockets, keyed by `bpf_get_current_pid_tgid()`.
#[map]
pub static PLAIN_CALLS: HashMap<u64, PlainCall> = HashMap::with_max_entries(16_384, 0);

/// Counts one undeliverable event.
pub fn count_drop(reason: DropReason) {
    if let Some(counter) = DROP_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Adds `bytes` to the connection's undelivered count.
pub fn count_lost(key: &ConnKey, bytes: u64) {
    match LOST_BYTES.get_ptr_mut(key) {
        // SAFETY: the pointer is a live map value; a racing update only loses a count, never memory safety.
        Some(lost) => unsafe { *lost += bytes },
        None => {
            let _ = LOST_BYTES.insert(key, &bytes, 0);
        }
    }
}

/// replayd's listener and DNS addresses; index 0 only. Written by replayd.
#[map]
pub static REDIRECT: Array<RedirectConfig> = Array::with_max_entries(1, 0);

/// IPv4 destinations (network order) whose TCP connects go to replayd: the
/// addresses replayd's DNS answers for recorded hosts.
#[map]
pub static REDIRECT_V4: HashMap<u32, u8> = HashMap::with_max_entries(4_096, 0);

/// Recorded plain-HTTP destinations (value unused), loopback ones included, whose TCP
/// connects go to replayd's listener. Written by replayd.
#[map]
pub static REDIRECT_PLAIN: HashMap<PlainDestination, u8> = HashMap::with_max_entries(1_024, 0);

/// Original destination of each redirected socket, by socket cookie.
#[map]
pub static ORIGINAL_BY_COOKIE: LruHashMap<u64, OriginalDestination> =
    LruHashMap::with_max_entries(65_536, 0);

/// Original destination of each redirected TCP connection, by the client's
/// local port (host order), for replayd to look up when it accepts.
#[map]
pub static ORIGINAL_BY_PORT: LruHashMap<u32, OriginalDestination> =
    LruHashMap::with_max_entries(65_536, 0);
