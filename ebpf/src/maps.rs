//! Every map the kernel programs share with each other and with userspace.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use llmsim_ebpf_common::{
    ConnKey, ConnLoss, DROP_REASONS, DropReason, Filter, LossKey, LossTotals, OriginalDestination,
    PlainDestination, RING_BUFFER_BYTES, RedirectConfig, SKIPPED_CONNS_ENTRIES, SkipTotals,
    SkippedConn,
};

use crate::emit::Call;

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

/// Connections whose plaintext nobody asked for, written by userspace (see
/// [`SkippedConn`]); every data source checks it in [`crate::emit::emit`]
/// before it reserves ring space. LRU, so it stays bounded.
#[map]
pub static SKIPPED_CONNS: LruHashMap<ConnKey, SkippedConn> =
    LruHashMap::with_max_entries(SKIPPED_CONNS_ENTRIES, 0);

/// Calls and bytes skipped on [`SKIPPED_CONNS`] connections; index 0 only.
#[map]
pub static SKIP_TOTALS: PerCpuArray<SkipTotals> = PerCpuArray::with_max_entries(1, 0);

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
    /// Calls of the same kind on the same connection nested inside this one
    /// and not yet returned (`SSL_read` calling `SSL_read_ex`, with both probed).
    pub merged: u32,
    /// Nonzero once the innermost call returned and emitted what it moved:
    /// the outer returns only unwind.
    pub done: u32,
}

/// Key of [`SSL_CALLS`]: a thread, and how many of its calls in progress the
/// call is nested in (a TLS library's callback can write while it reads).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallKey {
    pub pid_tgid: u64,
    pub level: u64,
}

/// Deepest nesting of calls in progress on one thread that is believed; a
/// deeper one means return probes were missed, and numbering starts again.
pub const MAX_CALL_LEVELS: u32 = 8;

/// Calls in progress, by thread and nesting level. A slot stays once its
/// call returned and the thread's next call at that level is written over it
/// (updating an LRU map's entry in place costs a lookup; inserting and
/// deleting one cost far more, on every TLS call). An LRU map: the slots of a
/// thread that is gone are evicted in time instead of filling the table. When
/// live calls fill it, the least recently used slot is evicted; a return that
/// finds its call's slot gone counts it, and its sequence number is never
/// used, so userspace sees the gap. The size is set at load time.
#[map]
pub static SSL_CALLS: LruHashMap<CallKey, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// How many calls each thread (`bpf_get_current_pid_tgid()`) has in
/// progress: the level of its next call; 0 stays when none is. LRU, like
/// [`SSL_CALLS`].
#[map]
pub static SSL_CALL_LEVELS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16_384, 0);

/// The innermost call in progress on a thread, for the syscall probes to add
/// its socket to.
#[inline(always)]
pub fn current_ssl_call(pid_tgid: u64) -> Option<*mut SslCall> {
    let (_, levels) = call_levels(pid_tgid);
    innermost_call(pid_tgid, levels)
}

/// A thread's entry in [`SSL_CALL_LEVELS`], if it has one, and its calls in progress
/// (0 without one).
#[inline(always)]
pub fn call_levels(pid_tgid: u64) -> (Option<*mut u32>, u32) {
    let entry = SSL_CALL_LEVELS.get_ptr_mut(&pid_tgid);
    // SAFETY: a live value of this thread's own entry.
    (entry, entry.map_or(0, |levels| unsafe { *levels }))
}

/// The innermost call in progress on a thread whose calls in progress are `levels`.
#[inline(always)]
pub fn innermost_call(pid_tgid: u64, levels: u32) -> Option<*mut SslCall> {
    if levels == 0 || levels > MAX_CALL_LEVELS {
        return None;
    }
    SSL_CALLS.get_ptr_mut(&CallKey {
        pid_tgid,
        level: u64::from(levels - 1),
    })
}

/// Writes `value` over `slot`, a thread's (or goroutine's) own entry of `map`
/// under `key`, or inserts it where it has none yet: an LRU insert is most of
/// an entry probe's cost. LRU maps evict instead of refusing;
/// an insert that fails all the same shows as a missing entry at the return.
#[inline(always)]
pub fn write_over<K, V: Copy>(map: &LruHashMap<K, V>, key: &K, slot: Option<*mut V>, value: &V) {
    match slot {
        // SAFETY: the caller's own entry, which nothing else writes.
        Some(slot) => unsafe { *slot = *value },
        None => {
            let _ = map.insert(key, value, 0);
        }
    }
}

/// Destinations whose plaintext is copied from the socket syscalls (value unused).
/// Written by userspace.
#[map]
pub static PLAIN_DESTINATIONS: HashMap<PlainDestination, u8> = HashMap::with_max_entries(256, 0);

/// A traced socket connected to a selected destination, or accepted on an app port.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PlainSocket {
    /// The connection id: [`llmsim_ebpf_common::PLAIN_CONNECTION`] | connect (or accept) time.
    pub conn: u64,
    /// Nonzero once the request side (the client's writes, or an accepted socket's
    /// reads) moved bytes that start an HTTP request, not a TLS `ClientHello`.
    pub checked: u32,
    /// Nonzero for a socket accepted on an app port: reads carry the requests.
    pub inbound: u32,
}

/// Selected sockets, keyed by `tgid << 32 | fd`.
#[map]
pub static PLAIN_SOCKETS: LruHashMap<u64, PlainSocket> = LruHashMap::with_max_entries(16_384, 0);

/// A read or write syscall in progress on a selected socket: the call as
/// [`crate::emit`] takes one, plus the syscall number, which says where the
/// buffer is.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PlainCall {
    pub call: Call,
    pub syscall: u64,
    /// The iovec count of `readv`/`writev` (for `sendmsg`/`recvmsg`, read from the `msghdr`).
    pub iovcnt: u64,
}

/// Syscalls in progress on selected sockets, keyed by `bpf_get_current_pid_tgid()`;
/// LRU, like [`SSL_CALLS`], for a thread that dies inside a syscall.
#[map]
pub static PLAIN_CALLS: LruHashMap<u64, PlainCall> = LruHashMap::with_max_entries(16_384, 0);

/// Ports whose accepted connections are captured as inbound (`--app-port`; value
/// unused), in host byte order. Written by userspace.
#[map]
pub static APP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// Sockets traced processes bound to one of the [`APP_PORTS`], keyed by
/// `tgid << 32 | fd` (value unused).
#[map]
pub static APP_LISTENERS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16_384, 0);

/// `accept()`/`accept4()` calls in progress on one of the [`APP_LISTENERS`], keyed by
/// `bpf_get_current_pid_tgid()` (value unused); LRU, like [`SSL_CALLS`].
#[map]
pub static ACCEPTS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16_384, 0);

/// Sockets traced processes connected and have not written to yet, keyed by
/// `tgid << 32 | fd` (value unused): their first write is looked at once for a
/// TLS `ClientHello` (`probes/hello.rs`).
#[map]
pub static TLS_CANDIDATES: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16_384, 0);

/// Counts one undeliverable event. Plaintext lost is accounted for by
/// [`crate::emit`], which calls this too.
pub fn count_drop(reason: DropReason) {
    if let Some(counter) = DROP_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// `*counter += n` (wrapping: `n.wrapping_neg()` subtracts) as one atomic
/// instruction (`BPF_ATOMIC | BPF_ADD`; the BPF target has no `AtomicU64`, so
/// through the intrinsic behind it).
///
/// # Safety
/// `counter` points at a live, aligned map value.
#[inline(always)]
pub unsafe fn atomic_add(counter: *mut u64, n: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's guarantee.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, n,
        );
    }
    // The host build exists only for clippy; it is never run.
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's guarantee.
    unsafe {
        *counter = (*counter).wrapping_add(n);
    }
}

/// New tasks of traced processes, by the address of their `task_struct`, from
/// their creation (`sched_process_fork`, in the parent) to their first followed
/// syscall or their exit, whichever comes first: a new process is held at that
/// syscall (see `probes::process`). Entries live for microseconds.
#[map]
pub static NEW_TASKS: HashMap<u64, u8> = HashMap::with_max_entries(8_192, 0);

/// The maps [`ENTRY_COUNTS`] counts, by index.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum Counted {
    /// [`NEW_TASKS`], looked up at every followed syscall.
    NewTasks,
    /// [`TLS_CANDIDATES`], looked up at every socket write.
    TlsCandidates,
    /// [`PLAIN_SOCKETS`], looked up at every socket call outside a TLS call.
    PlainSockets,
}

/// How many entries the maps `sys_enter` would otherwise look up for every
/// followed (socket) syscall on the machine hold, by [`Counted`]: while a map's count is
/// zero, its lookup is skipped for one array read. Added to by an insertion
/// that adds a key and taken from by a removal that finds one; an LRU map's
/// evictions leave its count too high, which costs lookups and never skips one.
#[map]
pub static ENTRY_COUNTS: Array<u64> = Array::with_max_entries(3, 0);

/// Whether the map counted as `which` may hold an entry.
#[inline(always)]
pub fn holds_entries(which: Counted) -> bool {
    ENTRY_COUNTS
        .get(which as u32)
        .is_some_and(|count| *count != 0)
}

/// Adds `n` (wrapping) to the count of `which`.
#[inline(always)]
pub fn count_entries(which: Counted, n: u64) {
    if let Some(count) = ENTRY_COUNTS.get_ptr_mut(which as u32) {
        // SAFETY: a live, aligned array value.
        unsafe { atomic_add(count, n) };
    }
}

/// Sets `key` to `value` in `map`, which is counted as `which`.
#[inline(always)]
pub fn insert_counted<V>(map: &LruHashMap<u64, V>, which: Counted, key: &u64, value: &V) {
    if map.insert(key, value, BPF_NOEXIST.into()).is_ok() {
        count_entries(which, 1);
    } else {
        let _ = map.insert(key, value, 0);
    }
}

/// Removes `key` from `map`, which is counted as `which`; whether it was there.
/// No lookup while the count is zero.
#[inline(always)]
pub fn remove_counted<V>(map: &LruHashMap<u64, V>, which: Counted, key: &u64) -> bool {
    if !holds_entries(which) {
        return false;
    }
    let removed = map.remove(key).is_ok();
    if removed {
        count_entries(which, 1u64.wrapping_neg());
    }
    removed
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

/// Original destination of each open redirected TCP connection, by the
/// client's local port (host order), for replayd to look up when it accepts.
#[map]
pub static ORIGINAL_BY_PORT: LruHashMap<u32, OriginalDestination> =
    LruHashMap::with_max_entries(65_536, 0);

/// Original destinations of the last connections that closed before anyone
/// asked for them, by local port, for a reader that asks late; a small LRU
/// map, so those nobody asks for (DNS over TCP, refused connections) take
/// bounded room. An open connection on the port replaces its entry.
#[map]
pub static ORIGINAL_OF_CLOSED: LruHashMap<u32, OriginalDestination> =
    LruHashMap::with_max_entries(1_024, 0);
