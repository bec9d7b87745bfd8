//! The one path by which plaintext reaches userspace, and the accounting of
//! what does not. Every data source (the `SSL_*` probes, Go's `crypto/tls`
//! probes, the plain-HTTP socket syscalls) takes a sequence number for a call
//! when it enters ([`begin`]), gives it back if the call moved nothing
//! ([`cancel`]), and hands what it moved to [`emit`], which copies it into
//! ring-buffer records of at most [`CHUNK_SIZE`] bytes, each sized to its
//! chunk ([`DATA_CLASSES`]). A chunk that cannot be
//! delivered ends the call's emission; its reason, chunks and bytes are
//! counted per reason (`LOSS_TOTALS`) and per connection and direction
//! (`CONN_LOSS`, with atomic adds), and userspace is told at once by a
//! [`LossEvent`], or, when that cannot be delivered either, by the reason's
//! bit on the direction's next delivered chunk ([`DataEvent::lost`]). A call
//! whose entry was lost ([`missing_entry`]) leaves its sequence number
//! unused: userspace sees the gap on the right connection and direction
//! though the kernel cannot name them. When the connection ends, [`end`]
//! tells userspace, with its final accounting.
//!
//! A connection userspace marked as unwanted (`SKIPPED_CONNS`) costs no ring
//! space and no copy: [`emit`] counts its calls in `SKIP_TOTALS` and gives
//! their sequence numbers back, so skipping never looks like loss.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_loop, bpf_probe_read_user as probe_read_user_raw},
    },
};
use llmsim_ebpf_common::{
    CHUNK_SIZE, ConnKey, ConnLoss, DATA_CLASSES, DataEvent, Direction, DropReason, EventKind,
    FreeEvent, LossEvent, LossKey, MAX_CHUNKS_PER_CALL, RING_WAKEUP_BYTES, SkippedConn,
};

use crate::{
    maps::{CONN_LOSS, EVENTS, LOSS_TOTALS, SKIP_TOTALS, SKIPPED_CONNS, atomic_add, count_drop},
    probes::header,
};

/// One call's plaintext, as [`emit`] needs it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Call {
    /// The connection within its process (the `SSL *` for TLS).
    pub conn: u64,
    /// Where the plaintext is, in the process.
    pub buf: u64,
    /// Monotonic nanoseconds when the call was entered.
    pub start_ns: u64,
    /// The sequence number [`begin`] gave the call.
    pub seq: u64,
    /// A [`llmsim_ebpf_common::Direction`].
    pub direction: u32,
    /// The socket fd, or -1.
    pub fd: i32,
}

/// The accounting entry of one direction of one connection, created on first use.
#[inline(always)]
fn state(key: &LossKey) -> Option<*mut ConnLoss> {
    if let Some(state) = CONN_LOSS.get_ptr_mut(key) {
        return Some(state);
    }
    let _ = CONN_LOSS.insert(key, &ConnLoss::default(), u64::from(BPF_NOEXIST));
    CONN_LOSS.get_ptr_mut(key)
}

/// A call on `conn` in `direction` entered: its sequence number. Calls on one
/// connection in one direction do not overlap (OpenSSL forbids it), so the
/// number is taken without an atomic.
#[inline(always)]
pub fn begin(tgid: u32, conn: u64, direction: u32) -> u64 {
    let key = LossKey {
        tgid,
        direction,
        conn,
    };
    let Some(state) = state(&key) else {
        return 0;
    };
    // SAFETY: a live map value; see above for why no other writer races.
    unsafe {
        let seq = (*state).next_seq;
        (*state).next_seq = seq + 1;
        seq
    }
}

/// A call that moved no bytes gives its sequence number back, so a gap always
/// means bytes that were lost.
#[inline(always)]
pub fn cancel(tgid: u32, call: &Call) {
    let key = LossKey {
        tgid,
        direction: call.direction,
        conn: call.conn,
    };
    if let Some(state) = CONN_LOSS.get_ptr_mut(&key) {
        // SAFETY: a live map value, written by this direction's calls only.
        unsafe {
            if (*state).next_seq == call.seq + 1 {
                (*state).next_seq = call.seq;
            }
        }
    }
}

/// A return found no entry for its call: the call table evicted it. Its
/// connection is unknown here; its unused sequence number names it to userspace.
#[inline(always)]
pub fn missing_entry() {
    count_drop(DropReason::MissingEntry);
    if let Some(totals) = LOSS_TOTALS.get_ptr_mut(DropReason::MissingEntry as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*totals).calls += 1;
            (*totals).whole_calls += 1;
        }
    }
}

/// A call of which nothing can be delivered, for `reason`: `bytes` of it
/// (0 when its length is not known) are lost and its sequence number stays
/// unused, the gap userspace sees.
#[inline(always)]
pub fn lose_whole(tgid: u32, call: &Call, reason: DropReason, bytes: u64) {
    let key = LossKey {
        tgid,
        direction: call.direction,
        conn: call.conn,
    };
    let told = tell(call, &key, reason, 0, bytes);
    lose(
        state(&key),
        reason,
        true,
        bytes.div_ceil(CHUNK_SIZE as u64),
        bytes,
        told,
    );
}

/// State of one [`emit`] loop, shared with the `bpf_loop` callback.
#[repr(C)]
struct ChunkLoop {
    call: Call,
    pid_tgid: u64,
    moved: u64,
    /// Bytes emitted so far.
    offset: u64,
    /// [`DropReason`] bits carried by every chunk of this call.
    lost: u32,
    /// The [`DropReason`] that stopped the loop, or `u32::MAX`.
    failed: u32,
}

/// Emits the `moved` bytes at `call.buf` as consecutive chunk records, through
/// `bpf_loop` (kernel >= 5.17) so the verifier checks one iteration, not each.
/// Stops at the first record that cannot be delivered and accounts for the
/// rest (see the module's description). A call on a skipped connection is
/// only counted.
#[inline(always)]
pub fn emit(call: &Call, pid_tgid: u64, moved: u64) -> Option<DropReason> {
    if skip(call, pid_tgid, moved) != 0 {
        return None;
    }
    deliver::<true>(call, pid_tgid, moved)
}

/// [`emit`] without the `SKIPPED_CONNS` check (`SIZED` false), for a plain
/// socket: it was selected by its destination, so it is never skipped. The
/// socket syscall probes that copy it are at the verifier's combined stack
/// and instruction limits, so their chunks go in records of one class, the
/// largest; TLS calls (`SIZED` true) get records sized to each chunk.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the chunk count is cast only when at most MAX_CHUNKS_PER_CALL"
)]
pub fn deliver<const SIZED: bool>(call: &Call, pid_tgid: u64, moved: u64) -> Option<DropReason> {
    let key = LossKey {
        tgid: (pid_tgid >> 32) as u32,
        direction: call.direction,
        conn: call.conn,
    };
    let state = state(&key);
    // SAFETY: a live map value, written by this direction's calls only.
    let pending = state.map_or(0, |state| unsafe { (*state).pending });
    let chunks = moved.div_ceil(CHUNK_SIZE as u64);
    let iterations = if chunks > u64::from(MAX_CHUNKS_PER_CALL) {
        MAX_CHUNKS_PER_CALL
    } else {
        chunks as u32
    };
    let mut run = ChunkLoop {
        call: *call,
        pid_tgid,
        moved,
        offset: 0,
        lost: pending,
        failed: u32::MAX,
    };
    // SAFETY: the callback is a BPF subprogram taking `&mut ChunkLoop` as its context.
    unsafe {
        bpf_loop(
            iterations,
            chunk_step::<SIZED> as *mut c_void,
            (&raw mut run).cast(),
            0,
        );
    }
    if run.offset > 0
        && let Some(state) = state
    {
        // Delivered: userspace has the bits now.
        // SAFETY: as above.
        unsafe { (*state).pending &= !pending };
    }
    if run.offset >= moved {
        return None;
    }
    let reason = if run.failed == DropReason::RingFull as u32 {
        DropReason::RingFull
    } else if run.failed == DropReason::CopyFailed as u32 {
        DropReason::CopyFailed
    } else {
        DropReason::ChunkCap
    };
    let lost_chunks = chunks - run.offset.div_ceil(CHUNK_SIZE as u64);
    let told = tell(call, &key, reason, run.offset, moved - run.offset);
    lose(
        state,
        reason,
        run.offset == 0,
        lost_chunks,
        moved - run.offset,
        told,
    );
    Some(reason)
}

/// 1 when the call's connection is in `SKIPPED_CONNS`: the call is counted
/// as skipped, its request turn noted and its sequence number given back.
/// A subprogram of its own, so the programs that emit keep their frames.
#[inline(never)]
fn skip(call: &Call, pid_tgid: u64, moved: u64) -> u32 {
    let tgid = (pid_tgid >> 32) as u32;
    let key = ConnKey {
        tgid,
        pad: 0,
        conn: call.conn,
    };
    let Some(entry) = SKIPPED_CONNS.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: a live map value; a race between the two directions' calls can
    // at worst miscount a turn.
    unsafe {
        if call.direction == Direction::Write as u32 && (*entry).last != call.direction {
            (*entry).requests += 1;
        }
        if (*entry).first == 0 {
            (*entry).first = call.direction;
        }
        (*entry).last = call.direction;
    }
    if let Some(totals) = SKIP_TOTALS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*totals).calls += 1;
            (*totals).bytes += moved;
        }
    }
    cancel(tgid, call);
    1
}

/// Sends the [`LossEvent`] of a call; false when it cannot be delivered. Written in place
/// in the ring rather than built on the stack: the programs that inline this are near the
/// verifier's 512-byte combined stack limit (6.1 and older count every frame of a call
/// chain against it).
#[inline(always)]
fn tell(call: &Call, key: &LossKey, reason: DropReason, delivered: u64, lost_bytes: u64) -> bool {
    let Some(mut entry) = EVENTS.reserve::<LossEvent>(0) else {
        return false;
    };
    let mut header = header(EventKind::Loss);
    header.tgid = key.tgid;
    entry.write(LossEvent {
        header,
        ssl: call.conn,
        seq: call.seq,
        delivered,
        lost_bytes,
        direction: call.direction,
        reason: reason as u32,
    });
    entry.submit(0);
    true
}

/// Accounts for a call that lost `chunks` chunks (`bytes` bytes) for
/// `reason`; unless userspace was `told`, the reason's bit waits for the
/// direction's next record.
#[inline(always)]
fn lose(
    state: Option<*mut ConnLoss>,
    reason: DropReason,
    whole: bool,
    chunks: u64,
    bytes: u64,
    told: bool,
) {
    count_drop(reason);
    if let Some(totals) = LOSS_TOTALS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*totals).calls += 1;
            (*totals).whole_calls += u64::from(whole);
            (*totals).chunks += chunks;
            (*totals).bytes += bytes;
        }
    }
    if let Some(state) = state {
        // SAFETY: a live map value; the counters may be read and added to
        // from other CPUs, hence the atomic adds.
        unsafe {
            atomic_add(&raw mut (*state).calls, 1);
            atomic_add(&raw mut (*state).chunks, chunks);
            atomic_add(&raw mut (*state).bytes, bytes);
            if !told {
                (*state).pending |= reason.bit();
            }
        }
    }
}

/// One `bpf_loop` iteration: emits chunk `index`; returns 1 to stop. The
/// offset is derived from `index`, not carried in the state, so the verifier
/// sees one imprecise iteration and converges instead of walking all of them.
extern "C" fn chunk_step<const SIZED: bool>(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `ChunkLoop` on the caller's stack.
    let run = unsafe { &mut *ctx.cast::<ChunkLoop>() };
    let offset = u64::from(index) * CHUNK_SIZE as u64;
    if offset >= run.moved {
        return 1;
    }
    let mut len = run.moved - offset;
    if len > CHUNK_SIZE as u64 {
        len = CHUNK_SIZE as u64;
    }
    let emitted = if SIZED {
        emit_chunk(run, offset, len)
    } else {
        emit_full(run, offset, len)
    };
    match emitted {
        Ok(()) => {
            run.offset = offset + len;
            0
        }
        Err(reason) => {
            run.failed = reason as u32;
            1
        }
    }
}

/// Emits one chunk of at most [`CHUNK_SIZE`] bytes in the smallest record of
/// [`DATA_CLASSES`] that holds it.
#[inline(never)]
fn emit_chunk(run: &ChunkLoop, offset: u64, len: u64) -> Result<(), DropReason> {
    const _: () = assert!(DATA_CLASSES.len() == 3 && DATA_CLASSES[2] == CHUNK_SIZE);
    if len <= DATA_CLASSES[0] as u64 {
        emit_sized::<{ DATA_CLASSES[0] }>(run, offset, len)
    } else if len <= DATA_CLASSES[1] as u64 {
        emit_sized::<{ DATA_CLASSES[1] }>(run, offset, len)
    } else {
        emit_sized::<CHUNK_SIZE>(run, offset, len)
    }
}

/// Emits one chunk in a record of the largest class, [`CHUNK_SIZE`]: one path
/// for the verifier, for the programs near its instruction limit.
#[inline(never)]
fn emit_full(run: &ChunkLoop, offset: u64, len: u64) -> Result<(), DropReason> {
    emit_sized::<CHUNK_SIZE>(run, offset, len)
}

/// Emits one chunk in a record whose payload holds `N` bytes: a constant
/// reservation, as `bpf_ringbuf_reserve` requires.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "callers pass at most N bytes; the clamp after the cast is the bound the verifier checks"
)]
fn emit_sized<const N: usize>(run: &ChunkLoop, offset: u64, len: u64) -> Result<(), DropReason> {
    let call = &run.call;
    let mut len = len as u32;
    if len > N as u32 {
        len = N as u32;
    }
    let Some(mut entry) = EVENTS.reserve::<DataEvent<N>>(0) else {
        return Err(DropReason::RingFull);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at an exclusive ring-buffer reservation of
    // `size_of::<DataEvent<N>>()` bytes; `len` is clamped to the data array's size.
    let copied = unsafe {
        (*event).header = header(EventKind::Data);
        (*event).header.tgid = (run.pid_tgid >> 32) as u32;
        (*event).ssl = call.conn;
        (*event).call_len = run.moved;
        (*event).offset = offset;
        (*event).start_ns = call.start_ns;
        (*event).direction = call.direction;
        (*event).len = len;
        (*event).fd = call.fd;
        (*event).pad = 0;
        (*event).seq = call.seq;
        (*event).lost = run.lost;
        (*event).pad2 = 0;
        probe_read_user_raw(
            (*event).data.as_mut_ptr().cast(),
            len,
            (call.buf + offset) as *const _,
        )
    };
    if copied != 0 {
        entry.discard(0);
        return Err(DropReason::CopyFailed);
    }
    entry.submit(batched_wakeup());
    Ok(())
}

/// Submit flags for a record that can wait: wake userspace only when the ring
/// holds more than [`RING_WAKEUP_BYTES`] (it drains on a timer otherwise).
#[inline(always)]
pub fn batched_wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA.into()) > RING_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// The connection `conn` of the current process ended (`SSL_free`, a plain
/// socket's `close()`, Go's `(*tls.Conn).Close`): tells userspace, with each
/// direction's final accounting, so an exchange waiting for the end is written
/// and calls lost at the end show as a gap. The accounting is removed from the
/// map, so a later connection reusing the identity starts afresh; when the
/// record cannot be delivered it stays, for userspace to read when the process
/// exits.
#[inline(always)]
pub fn end(conn: u64) {
    let Some(mut entry) = EVENTS.reserve::<FreeEvent>(0) else {
        count_drop(DropReason::RingFull);
        // Skipping must end with the connection: the identity may be reused.
        take_skipped((bpf_get_current_pid_tgid() >> 32) as u32, conn, None);
        return;
    };
    let header = header(EventKind::Free);
    let write = end_direction(header.tgid, conn, Direction::Write);
    let read = end_direction(header.tgid, conn, Direction::Read);
    let event = entry.as_mut_ptr();
    // SAFETY: an exclusive reservation of `size_of::<FreeEvent>()` bytes,
    // written field by field rather than built on the stack (see [`tell`]).
    unsafe {
        (*event).header = header;
        (*event).ssl = conn;
        (*event).next_seq = [write.next_seq, read.next_seq];
        (*event).lost = [write.pending, read.pending];
        (*event).lost_bytes = [write.bytes, read.bytes];
        take_skipped(header.tgid, conn, Some(&mut (*event).skipped));
    }
    entry.submit(batched_wakeup());
}

/// Removes the `SKIPPED_CONNS` entry of `conn` of process `tgid`, first
/// copying it to `out` (all zero when there is none). A subprogram of its
/// own, so its key is not on the frames of the programs that end connections,
/// which are near 6.1's combined stack limit.
#[inline(never)]
fn take_skipped(tgid: u32, conn: u64, out: Option<&mut SkippedConn>) {
    let key = ConnKey { tgid, pad: 0, conn };
    if let Some(out) = out {
        // SAFETY: the value is copied.
        *out = unsafe { SKIPPED_CONNS.get(&key) }
            .copied()
            .unwrap_or_default();
    }
    let _ = SKIPPED_CONNS.remove(&key);
}

/// The accounting of one direction of `conn`, removed from the map.
#[inline(always)]
fn end_direction(tgid: u32, conn: u64, direction: Direction) -> ConnLoss {
    let key = LossKey {
        tgid,
        direction: direction as u32,
        conn,
    };
    // SAFETY: the value is copied before the entry is removed.
    let Some(state) = (unsafe { CONN_LOSS.get(&key) }).copied() else {
        return ConnLoss::default();
    };
    let _ = CONN_LOSS.remove(&key);
    state
}

/// Forgets the accounting of both directions of `conn`, a connection
/// userspace was never told of (a socket found not to carry plain HTTP).
#[inline(always)]
pub fn forget(tgid: u32, conn: u64) {
    end_direction(tgid, conn, Direction::Write);
    end_direction(tgid, conn, Direction::Read);
}
