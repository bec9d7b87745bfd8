//! Plain-old-data types shared by the kernel programs (`llmsim-ebpf`) and the
//! userspace agent: ring-buffer records, map keys and values, and the limits both
//! sides must agree on. Every type is `#[repr(C)]` with fixed-width fields and
//! explicit padding, and its size is asserted, so the two sides can never drift.
#![no_std]
#![deny(unsafe_code)]

use core::mem::size_of;

pub mod syscall;

/// Most bytes of payload carried by one ring-buffer record. Larger `SSL_*` calls are
/// split into consecutive chunks of this size.
pub const CHUNK_SIZE: usize = 16 * 1024;
/// The payload sizes a data record is reserved with, smallest first: a chunk
/// takes the smallest that holds it, so a short call costs the ring a short
/// record (`bpf_ringbuf_reserve` takes only constant sizes, hence classes;
/// each class is one more path through the copy for the verifier, which is
/// why there are few).
pub const DATA_CLASSES: [usize; 3] = [512, 2048, CHUNK_SIZE];
/// Most chunks one `SSL_*` call may emit (64 MiB). Beyond this, the rest is
/// counted as dropped under [`DropReason::ChunkCap`] and the call is flagged.
pub const MAX_CHUNKS_PER_CALL: u32 = 4096;
/// Bytes of SNI kept from `SSL_ctrl(SSL_CTRL_SET_TLSEXT_HOSTNAME)`.
pub const SNI_LEN: usize = 256;
/// Deepest cgroup v2 level whose processes the cgroup filter recognises (the
/// root is level 0; systemd and CI runners nest a handful of levels).
pub const MAX_CGROUP_DEPTH: i32 = 32;
/// Size of the ring buffer shared by all probes.
pub const RING_BUFFER_BYTES: u32 = 64 * 1024 * 1024;
/// Data records wake userspace only once this much is waiting; below it,
/// userspace drains the ring on a timer. A wakeup per record would cost the
/// traced call several microseconds (an inter-processor interrupt and a
/// context switch), more than copying the record itself.
pub const RING_WAKEUP_BYTES: u64 = RING_BUFFER_BYTES as u64 / 8;
/// Bytes of a TCP connection's first write kept in a [`TlsHelloEvent`]: enough
/// for the server name of a usual `ClientHello`.
pub const TLS_HELLO_LEN: usize = 512;

/// What a ring-buffer record is. The first field of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`DataEvent`]: plaintext passed to or returned by `SSL_write*`/`SSL_read*`.
    Data = 1,
    /// An [`SniEvent`]: the host name a client set on an `SSL` object.
    Sni = 2,
    /// An [`ExecEvent`]: a traced process called `execve`.
    Exec = 3,
    /// A [`ConnectEvent`]: a traced thread's `connect()` returned.
    Connect = 4,
    /// A [`FreeEvent`]: a traced process freed an `SSL` object.
    Free = 5,
    /// A [`LossEvent`]: some of a call's plaintext could not be delivered.
    Loss = 6,
    /// A [`TlsHelloEvent`]: a traced process's TCP socket began with a TLS handshake.
    TlsHello = 7,
    /// An [`AcceptEvent`]: a traced thread accepted a connection on an app port.
    Accept = 8,
    /// A [`ForkEvent`]: a traced process started a new process (not a thread).
    Fork = 9,
}

impl EventKind {
    /// Decodes the wire value; `None` for anything this build does not know.
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Data),
            2 => Some(Self::Sni),
            3 => Some(Self::Exec),
            4 => Some(Self::Connect),
            5 => Some(Self::Free),
            6 => Some(Self::Loss),
            7 => Some(Self::TlsHello),
            8 => Some(Self::Accept),
            9 => Some(Self::Fork),
            _ => None,
        }
    }
}

/// Which way plaintext went through the TLS library.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `SSL_write*`: the process sent it.
    Write = 1,
    /// `SSL_read*`: the process received it.
    Read = 2,
}

impl Direction {
    /// Decodes the wire value.
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Write),
            2 => Some(Self::Read),
            _ => None,
        }
    }
}

/// Why a kernel event could not be delivered; the index into the `DROP_COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// `bpf_ringbuf_reserve` failed: userspace fell behind.
    RingFull = 0,
    /// `bpf_probe_read_user` failed: the buffer was not readable.
    CopyFailed = 1,
    /// The call was larger than [`MAX_CHUNKS_PER_CALL`] chunks.
    ChunkCap = 2,
    /// A return probe found no matching entry: the call table (an LRU map)
    /// was full and evicted the call's entry.
    MissingEntry = 3,
}

impl DropReason {
    /// Every reason, in counter-index order.
    pub const ALL: [Self; 4] = [
        Self::RingFull,
        Self::CopyFailed,
        Self::ChunkCap,
        Self::MissingEntry,
    ];

    /// This reason's bit in [`DataEvent::lost`] and [`FreeEvent::lost`].
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RingFull => "ring_full",
            Self::CopyFailed => "copy_failed",
            Self::ChunkCap => "chunk_cap",
            Self::MissingEntry => "missing_entry",
        }
    }
}

/// Number of [`DropReason`] values: the length of the per-CPU drop counter array.
#[expect(clippy::cast_possible_truncation, reason = "a handful of reasons")]
pub const DROP_REASONS: u32 = DropReason::ALL.len() as u32;

/// Fields every record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u32,
    /// Thread group id (the userspace pid).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Explicit padding.
    pub pad: u32,
    /// `bpf_ktime_get_ns()`: `CLOCK_MONOTONIC` nanoseconds.
    pub timestamp_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 24);

/// One chunk of plaintext from one `SSL_*` call, in a record whose payload
/// holds `N` bytes, one of [`DATA_CLASSES`]; the fields before `data` are the
/// same for every `N`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent<const N: usize = CHUNK_SIZE> {
    /// `kind` is [`EventKind::Data`]; the timestamp is when the call returned.
    pub header: EventHeader,
    /// The `SSL *` the call was made on: the connection's identity.
    pub ssl: u64,
    /// Bytes the whole call moved (may exceed this chunk).
    pub call_len: u64,
    /// Offset of this chunk within the call.
    pub offset: u64,
    /// Monotonic nanoseconds when the call was entered.
    pub start_ns: u64,
    /// A [`Direction`].
    pub direction: u32,
    /// Valid bytes in `data`.
    pub len: u32,
    /// Socket fd seen in a nested read/write syscall during the call, or -1
    /// (memory BIOs, as in node, make no nested syscalls).
    pub fd: i32,
    /// Explicit padding.
    pub pad: u32,
    /// The call's sequence number in its connection's direction: 0, 1, 2...
    /// for the calls that moved bytes. A number skipped is a call of which no
    /// chunk arrived.
    pub seq: u64,
    /// [`DropReason`] bits ([`DropReason::bit`]) of what this direction lost
    /// since the chunk before this call's.
    pub lost: u32,
    /// Explicit padding.
    pub pad2: u32,
    /// The plaintext.
    pub data: [u8; N],
}
const _: () = assert!(size_of::<DataEvent>() == 24 + 64 + CHUNK_SIZE);
const _: () = assert!(size_of::<DataEvent<512>>() == 24 + 64 + 512);

/// A host name set with `SSL_set_tlsext_host_name`, which OpenSSL implements
/// as `SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, 0, name)`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SniEvent {
    /// `kind` is [`EventKind::Sni`].
    pub header: EventHeader,
    /// The `SSL *` the name was set on.
    pub ssl: u64,
    /// NUL-terminated host name.
    pub name: [u8; SNI_LEN],
}
const _: () = assert!(size_of::<SniEvent>() == 24 + 8 + SNI_LEN);

/// A traced process called `execve`: userspace rescans its mappings for TLS libraries.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// `kind` is [`EventKind::Exec`].
    pub header: EventHeader,
    /// 1 when the process was stopped (`SIGSTOP`) before its new program's
    /// first instruction, for userspace to attach its probes and continue it
    /// (see [`Filter::hold`]); 0 otherwise.
    pub held: u32,
    /// Explicit padding.
    pub pad: u32,
}
const _: () = assert!(size_of::<ExecEvent>() == 32);

/// A traced process's new child process, seen from the child before its
/// first instruction (the header names the child); reported only while
/// [`Filter::hold`] is set.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    /// `kind` is [`EventKind::Fork`].
    pub header: EventHeader,
    /// As in [`ExecEvent::held`].
    pub held: u32,
    /// Explicit padding.
    pub pad: u32,
}
const _: () = assert!(size_of::<ForkEvent>() == 32);

/// `SSL_free(ssl)`: the connection is over, and the pointer may name a new
/// one from now on.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FreeEvent {
    /// `kind` is [`EventKind::Free`].
    pub header: EventHeader,
    /// The freed `SSL *`.
    pub ssl: u64,
    /// Per direction (index `Direction - 1`): the sequence number the next
    /// call would have had, so calls lost at the end show as a gap.
    pub next_seq: [u64; 2],
    /// Per direction: [`DropReason`] bits lost since the last chunk delivered.
    pub lost: [u32; 2],
    /// Per direction: bytes of the connection that could not be delivered.
    pub lost_bytes: [u64; 2],
    /// The connection's entry of the `SKIPPED_CONNS` map, removed (all zero
    /// when it had none, or when the map evicted it).
    pub skipped: SkippedConn,
}
const _: () = assert!(size_of::<FreeEvent>() == 24 + 8 + 16 + 8 + 16 + 16);

/// Some of one call's plaintext could not be delivered: sent right after the
/// chunks that were, so userspace flags the exchange with the reason at once.
/// When this record cannot be delivered either, the reason's bit rides on the
/// direction's next chunk ([`DataEvent::lost`]) or on [`FreeEvent::lost`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LossEvent {
    /// `kind` is [`EventKind::Loss`].
    pub header: EventHeader,
    /// The connection (the `SSL *` for TLS).
    pub ssl: u64,
    /// The call's sequence number ([`DataEvent::seq`]).
    pub seq: u64,
    /// Bytes of the call that were delivered, from its start.
    pub delivered: u64,
    /// Bytes of the call that were not.
    pub lost_bytes: u64,
    /// A [`Direction`].
    pub direction: u32,
    /// A [`DropReason`].
    pub reason: u32,
}
const _: () = assert!(size_of::<LossEvent>() == 24 + 40);

/// A traced thread called `connect()` on an IPv4 or IPv6 socket. Reported at the
/// call's entry: one that fails leaves a socket nothing is sent on.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    /// `kind` is [`EventKind::Connect`].
    pub header: EventHeader,
    /// The socket fd.
    pub fd: i32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Port in host byte order.
    pub port: u16,
    /// IPv4 address in the first 4 bytes, or the IPv6 address.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ConnectEvent>() == 24 + 24);

/// A traced thread's `accept()`/`accept4()` on a socket bound to an app port
/// (`--app-port`) returned `fd`: the process serves that connection, reading requests
/// and writing responses, whether in plain HTTP or through a TLS library.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AcceptEvent {
    /// `kind` is [`EventKind::Accept`].
    pub header: EventHeader,
    /// The accepted socket's fd.
    pub fd: i32,
    /// Explicit padding.
    pub pad: u32,
}
const _: () = assert!(size_of::<AcceptEvent>() == 24 + 8);

/// The first write on a socket a traced process connected started with a TLS
/// handshake record (`0x16`): its first bytes, for the `ClientHello`'s server
/// name (the peer is the socket's [`ConnectEvent`]'s). Sent once per socket,
/// whatever library (if any) later decrypts it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsHelloEvent {
    /// `kind` is [`EventKind::TlsHello`].
    pub header: EventHeader,
    /// The socket fd.
    pub fd: i32,
    /// Valid bytes in `data`.
    pub len: u32,
    /// The start of the first write.
    pub data: [u8; TLS_HELLO_LEN],
}
const _: () = assert!(size_of::<TlsHelloEvent>() == 24 + 8 + TLS_HELLO_LEN);

/// One direction of one connection: the key of the `CONN_LOSS` map. `conn`
/// is the connection's identity within its process (the `SSL *` for TLS).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LossKey {
    /// Thread group id.
    pub tgid: u32,
    /// A [`Direction`].
    pub direction: u32,
    /// The connection within the process.
    pub conn: u64,
}
const _: () = assert!(size_of::<LossKey>() == 16);

/// Sequence and loss accounting of one direction of one connection: the
/// value of the `CONN_LOSS` map. The counters are added to atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnLoss {
    /// The sequence number the next call that moves bytes gets.
    pub next_seq: u64,
    /// Calls of which some bytes could not be delivered.
    pub calls: u64,
    /// Chunks that could not be delivered.
    pub chunks: u64,
    /// Bytes that could not be delivered.
    pub bytes: u64,
    /// [`DropReason`] bits lost since the last chunk delivered; handed to
    /// userspace in the next [`DataEvent::lost`] or [`FreeEvent::lost`].
    pub pending: u32,
    /// Explicit padding.
    pub pad: u32,
}
const _: () = assert!(size_of::<ConnLoss>() == 40);

/// A connection whose plaintext nobody asked for (its SNI names a host the
/// capture does not record): the value of the `SKIPPED_CONNS` map, keyed by
/// [`ConnKey`]. Userspace inserts it with `present` set once it knows; from
/// then on every data probe returns before reserving ring space or copying,
/// and counts the call in `SKIP_TOTALS` instead. Skipped is not dropped: no
/// exchange anyone wanted lost a byte. The kernel keeps the rest up to date,
/// so userspace can still count the exchanges it did not see.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkippedConn {
    /// 1 for an entry userspace inserted; 0 in a [`FreeEvent`] means none was found.
    pub present: u32,
    /// The [`Direction`] of the first call skipped, or 0 before any.
    pub first: u32,
    /// The [`Direction`] of the last call skipped, or 0 before any.
    pub last: u32,
    /// Request turns skipped: write calls that followed a read, or came first.
    /// For a client speaking HTTP/1.1, the exchanges it made.
    pub requests: u32,
}
const _: () = assert!(size_of::<SkippedConn>() == 16);

/// One connection of one process: the key of the `SKIPPED_CONNS` map, as
/// the data probes name a connection (the `SSL *`, Go's `*tls.Conn`, or a
/// kernel-numbered plain or rustls socket; see [`DataEvent::ssl`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Thread group id.
    pub tgid: u32,
    /// Explicit padding.
    pub pad: u32,
    /// The connection within the process.
    pub conn: u64,
}
const _: () = assert!(size_of::<ConnKey>() == 16);

/// Calls and bytes the data probes skipped on [`SkippedConn`] connections:
/// the single entry of the `SKIP_TOTALS` per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipTotals {
    /// Calls whose plaintext was neither copied nor put in the ring.
    pub calls: u64,
    /// Their bytes.
    pub bytes: u64,
}
const _: () = assert!(size_of::<SkipTotals>() == 16);

/// Entries of the `SKIPPED_CONNS` map (LRU: a connection never closed is
/// evicted in time, and its plaintext arrives again, to be discarded by userspace).
pub const SKIPPED_CONNS_ENTRIES: u32 = 16_384;

/// What one [`DropReason`] cost, summed over connections: one entry per
/// reason in the `LOSS_TOTALS` per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossTotals {
    /// Calls of which some bytes were lost.
    pub calls: u64,
    /// Of those, calls of which no chunk was delivered (userspace sees them
    /// as skipped sequence numbers).
    pub whole_calls: u64,
    /// Chunks lost (a call with no entry is not counted: its length is unknown).
    pub chunks: u64,
    /// Bytes lost (likewise).
    pub bytes: u64,
}
const _: () = assert!(size_of::<LossTotals>() == 32);

/// Which processes the probes report: the single entry of the `FILTER` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    /// A [`FilterMode`].
    pub mode: u32,
    /// 1: every traced process that starts (fork) or execs is stopped with
    /// `SIGSTOP` before its first instruction, reported held, and continued
    /// by userspace once its per-process probes are planted; 0: never.
    pub hold: u32,
}
const _: () = assert!(size_of::<Filter>() == 8);

/// How [`Filter`] selects processes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterMode {
    /// Nothing is reported (the state before userspace configures the filter).
    Off = 0,
    /// Processes whose tgid is a key of `TARGET_TGIDS`.
    Tgids = 1,
    /// Processes whose cgroup v2 id is a key of `TARGET_CGROUPS`.
    Cgroups = 2,
    /// Every process on the host.
    All = 3,
}

/// Where replayd wants redirected connections: the single entry of the
/// `REDIRECT` array. Addresses and ports are in network byte order, as the
/// kernel's `bpf_sock_addr` holds them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RedirectConfig {
    /// replayd's IPv4 listener address.
    pub listener_ip4: u32,
    /// replayd's listener port (network order in the low 16 bits).
    pub listener_port: u32,
    /// replayd's IPv6 listener address (`::1`), used for IPv6 destinations.
    pub listener_ip6: [u32; 4],
    /// replayd's IPv6 listener port (network order in the low 16 bits).
    pub listener6_port: u32,
    /// replayd's DNS responder address (UDP and TCP).
    pub dns_ip4: u32,
    /// replayd's DNS responder port (network order in the low 16 bits).
    pub dns_port: u32,
    /// `REDIRECT_FLAG_*` bits.
    pub flags: u32,
    /// replayd's own tgid, never redirected (it may run inside the cgroup).
    pub exempt_tgid: u32,
    /// replayd's IPv6 DNS responder address (`::1`), for IPv6 nameservers.
    pub dns_ip6: [u32; 4],
    /// replayd's IPv6 DNS responder port (network order in the low 16 bits);
    /// 0 when it has none, and IPv6 DNS goes to the IPv4-mapped `dns_ip4`.
    pub dns6_port: u32,
}
// Sixteen words: no padding.
const _: () = assert!(size_of::<RedirectConfig>() == 64);

/// [`RedirectConfig::flags`]: redirect every non-loopback TCP destination,
/// not only the addresses in `REDIRECT_V4`.
pub const REDIRECT_FLAG_ALL_HOSTS: u32 = 1;

/// A connection's original destination, as the app asked for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDestination {
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// Port, network order in the low 16 bits.
    pub port: u32,
    /// IPv4 address (network order) in the first word, or the IPv6 address.
    pub addr: [u32; 4],
}
const _: () = assert!(size_of::<OriginalDestination>() == 24);

/// Bit set in the connection id of a plain (not TLS) TCP connection, which stands
/// where the `SSL *` does in [`DataEvent::ssl`], [`FreeEvent::ssl`] and [`LossKey::conn`]:
/// the kernel numbers a selected socket's connection from its connect time, so it never
/// collides with a user-space pointer (below 2^47).
pub const PLAIN_CONNECTION: u64 = 1 << 63;

/// Whether the connection id `ssl` names a plain TCP connection (see [`PLAIN_CONNECTION`]).
pub const fn is_plain_connection(ssl: u64) -> bool {
    ssl & PLAIN_CONNECTION != 0
}

/// Bit set in the connection id of a rustls connection, which stands where the `SSL *`
/// does (see [`PLAIN_CONNECTION`]): rustls has no object per socket that both directions
/// pass through, so the kernel numbers each socket that carries TLS records from the
/// first such record it sees written, as it numbers plain sockets.
pub const RUSTLS_CONNECTION: u64 = 1 << 62;

/// A plain TCP destination. Capture: a key of the `PLAIN_DESTINATIONS` map, whose
/// traffic is copied from the socket syscalls, written by the agent for
/// `--host HOST:PORT`; there a key with `family` 0 and a zero address matches every
/// address on `port`, and with `port` 0 too, every destination (`--any-host`). Replay:
/// a key of the `REDIRECT_PLAIN` map, a recorded plain-HTTP destination whose connects
/// replayd answers (exact keys only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PlainDestination {
    /// The IPv4 address in the first 4 bytes, or the IPv6 address.
    pub addr: [u8; 16],
    /// Port in host byte order.
    pub port: u16,
    /// `AF_INET`, `AF_INET6`, or 0 for any address.
    pub family: u16,
}
const _: () = assert!(size_of::<PlainDestination>() == 20);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integer-only types with explicit padding.
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::LossKey {}
    unsafe impl aya::Pod for super::ConnLoss {}
    unsafe impl aya::Pod for super::LossTotals {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::SkippedConn {}
    unsafe impl aya::Pod for super::SkipTotals {}
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::OriginalDestination {}
    unsafe impl aya::Pod for super::PlainDestination {}
}
