//! Every map the kernel programs share with each other and with userspace.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use llmsim_ebpf_common::{
    ConnLoss, DROP_REASONS, DropReason, Filter, LossKey, LossTotals, OriginalDestination,
    RING_BUFFER_BYTES, RedirectConfig,
};

/// Every record for userspace: data chunks, SNI, connects, execs.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_BYTES, 0);

/// One `u64` per [`llmsim_ebpf_common::DropReason`]: events that could not be delivered.
#[map]
pub static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// One [`LossTotals`] per [`llmsim_ebpf_common::DropReason`]: the calls,
/// chunks and bytes of plaintext it cost.
#[map]
pub static LOSS_TOTALS: PerCpuArray<LossTotals> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// Sequence numbers and lost plaintext of each direction of each connection.
/// An LRU map: the entry of a connection that is never closed is evicted
/// rather than kept for ever.
#[map]
pub static CONN_LOSS: LruHashMap<LossKey, ConnLoss> = LruHashMap::with_max_entries(65_536, 0);

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
    /// The call's sequence number in its direction (see [`crate::emit::begin`]).
    pub seq: u64,
    pub direction: u32,
    /// Socket fd of a nested read/write syscall, or -1.
    pub fd: i32,
}

/// Calls in progress, keyed by `bpf_get_current_pid_tgid()`. An LRU map: the
/// entry of a call whose return probe never fires (its thread died inside
/// it) is evicted in time instead of filling the table. When live calls fill
/// it, the least recently entered one is evicted; its return finds no entry
/// and its sequence number is never used, so userspace sees the gap. The
/// size is set at load time.
#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// A `connect()` in progress: its fd and user-space `sockaddr *`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingConnect {
    pub fd: u64,
    pub addr: u64,
}

/// Connects in progress, keyed by `bpf_get_current_pid_tgid()`; LRU, like
/// [`SSL_CALLS`], for a thread that dies inside `connect()`.
#[map]
pub static CONNECTS: LruHashMap<u64, PendingConnect> = LruHashMap::with_max_entries(16_384, 0);

/// Counts one undeliverable event. Plaintext lost is accounted for by
/// [`crate::emit`], which calls this too.
pub fn count_drop(reason: DropReason) {
    if let Some(counter) = DROP_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// replayd's listener and DNS addresses; index 0 only. Written by replayd.
#[map]
pub static REDIRECT: Array<RedirectConfig> = Array::with_max_entries(1, 0);

/// IPv4 destinations (network order) whose TCP connects go to replayd: the
/// addresses replayd's DNS answers for recorded hosts.
#[map]
pub static REDIRECT_V4: HashMap<u32, u8> = HashMap::with_max_entries(4_096, 0);

/// Original destination of each redirected socket, by socket cookie.
#[map]
pub static ORIGINAL_BY_COOKIE: LruHashMap<u64, OriginalDestination> =
    LruHashMap::with_max_entries(65_536, 0);

/// Original destination of each redirected TCP connection, by the client's
/// local port (host order), for replayd to look up when it accepts.
#[map]
pub static ORIGINAL_BY_PORT: LruHashMap<u32, OriginalDestination> =
    LruHashMap::with_max_entries(65_536, 0);
