//! Uprobes on OpenSSL's plaintext API (also BoringSSL-compatible builds that
//! export the same names). Entry probes remember the call's arguments per thread;
//! one return probe copies what the call actually moved into the ring buffer,
//! in [`CHUNK_SIZE`] pieces, so calls of many MiB arrive whole.
//!
//! Userspace chooses where each program is attached (see the agent's
//! `placement` module): the public functions' entries, the internal worker
//! they call (`ssl_read_internal(s, buf, num, &readbytes)`, which takes the
//! `_ex` arguments, so `ssl_read_ex` and `ssl_write_ex` serve it), or the
//! `call` to that worker and the instruction it returns to
//! ([`ssl_call_return`]).
//!
//! A call whose plaintext or SNI cannot be read, or that made no socket
//! syscall (so its connection is unknown), also logs a debug line through
//! aya-log. The level is a load-time constant (`AYA_LOG_LEVEL` in .rodata,
//! set by `llmsim_kernel`'s loader); at the default, off, the verifier proves
//! each log branch dead and removes it, so it costs no instruction at all.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
        generated::{bpf_loop, bpf_probe_read_user as probe_read_user_raw},
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::debug;
use llmsim_ebpf_common::{
    CHUNK_SIZE, ConnKey, DataEvent, Direction, DropReason, EventKind, FreeEvent,
    MAX_CHUNKS_PER_CALL, RING_WAKEUP_BYTES, SNI_LEN, SniEvent,
};

use super::header;
use crate::{
    filter::is_traced,
    maps::{EVENTS, SSL_CALLS, SslCall, count_drop, count_lost},
};

/// `SSL_ctrl` command behind the `SSL_set_tlsext_host_name` macro.
const SSL_CTRL_SET_TLSEXT_HOSTNAME: i32 = 55;

/// `int SSL_write(SSL *ssl, const void *buf, int num)`; OpenSSL >= 0.9.8, kernel >= 5.8 (ring buffer).
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Write, false);
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`; OpenSSL >= 1.1.1.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Write, true);
    0
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`; OpenSSL >= 0.9.8.
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Read, false);
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`; OpenSSL >= 1.1.1.
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Read, true);
    0
}

/// Return of all four functions above: `int`, the byte count for the plain
/// variants; for the `_ex` variants and the worker they call, positive on
/// success (1 for the `_ex` variants), with the count in `*written`/`*readbytes`.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let _ = try_ssl_return(&ctx);
    0
}

/// The instruction a `call` to the worker returns to, inside `SSL_read*` or
/// `SSL_write*`, while `rax` still holds the worker's `int` result (the
/// entry was the `call` itself, probed with [`ssl_read_ex`] or [`ssl_write_ex`]).
/// A plain uprobe: the registers are those of the return, as for a uretprobe.
#[uprobe]
pub fn ssl_call_return(ctx: ProbeContext) -> u32 {
    let _ = try_ssl_return(&RetProbeContext::new(ctx.regs.cast()));
    0
}

/// `long SSL_ctrl(SSL *s, int cmd, long larg, void *parg)`; reports the SNI
/// set by `SSL_set_tlsext_host_name(s, name)`.
#[uprobe]
pub fn ssl_ctrl(ctx: ProbeContext) -> u32 {
    let _ = try_ssl_ctrl(&ctx);
    0
}

/// `void SSL_free(SSL *ssl)`: ends the connection, so an exchange waiting for
/// its end (a stream the client stopped reading) is written while the process
/// lives, and a later connection reusing the pointer starts afresh.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    if !is_traced() {
        return 0;
    }
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let event = FreeEvent {
        header: header(EventKind::Free),
        ssl,
    };
    if EVENTS.output(&event, batched_wakeup()).is_err() {
        count_drop(DropReason::RingFull);
    }
    0
}

fn enter(ctx: &ProbeContext, direction: Direction, ex: bool) {
    if !is_traced() {
        return;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let out_len = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let call = SslCall {
        ssl,
        buf,
        out_len,
        // SAFETY: plain helper call without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        direction: direction as u32,
        fd: -1,
    };
    if SSL_CALLS
        .insert(&bpf_get_current_pid_tgid(), &call, 0)
        .is_err()
    {
        count_drop(DropReason::MissingEntry);
    }
}

fn try_ssl_return(ctx: &RetProbeContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { SSL_CALLS.get(&pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = SSL_CALLS.remove(&pid_tgid);
    let ret: i64 = ctx.ret::<i32>().into();
    let moved = if call.out_len != 0 {
        if ret <= 0 {
            return Ok(());
        }
        // SAFETY: reading a user pointer with the fault-tolerant helper.
        unsafe { bpf_probe_read_user(call.out_len as *const u64) }.map_err(|_| {
            debug!(ctx, "SSL call on {:x}: its length cannot be read", call.ssl);
            count_drop(DropReason::CopyFailed);
            1i64
        })?
    } else {
        if ret <= 0 {
            return Ok(());
        }
        ret.cast_unsigned()
    };
    if call.fd < 0 {
        debug!(
            ctx,
            "SSL call on {:x}: no socket syscall seen, its connection is unknown", call.ssl
        );
    }
    emit_chunks(ctx, &call, pid_tgid, moved);
    Ok(())
}

/// State of one [`emit_chunks`] loop, shared with the `bpf_loop` callback.
#[repr(C)]
struct ChunkLoop {
    call: SslCall,
    pid_tgid: u64,
    moved: u64,
    /// Bytes emitted so far.
    offset: u64,
    /// The [`DropReason`] that stopped the loop, or `u32::MAX`.
    failed: u32,
    pad: u32,
}

/// Emits the `moved` bytes at `call.buf` as consecutive chunk records (of a TLS
/// call, or of a plain socket's syscall: see `plain.rs`), through
/// `bpf_loop` (kernel >= 5.17) so the verifier checks one iteration, not each.
/// Stops at the first record that cannot be delivered: userspace sees fewer
/// bytes than `call_len` and flags the exchange; the kernel counts the reason
/// and the connection's lost bytes.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the chunk count is cast only when at most MAX_CHUNKS_PER_CALL"
)]
pub(super) fn emit_chunks<C: EbpfContext>(ctx: &C, call: &SslCall, pid_tgid: u64, moved: u64) {
    let chunks = moved.div_ceil(CHUNK_SIZE as u64);
    let iterations = if chunks > u64::from(MAX_CHUNKS_PER_CALL) {
        MAX_CHUNKS_PER_CALL
    } else {
        chunks as u32
    };
    let mut state = ChunkLoop {
        call: *call,
        pid_tgid,
        moved,
        offset: 0,
        failed: u32::MAX,
        pad: 0,
    };
    // SAFETY: the callback is a BPF subprogram taking `&mut ChunkLoop` as its context.
    unsafe {
        bpf_loop(
            iterations,
            chunk_step as *mut c_void,
            (&raw mut state).cast(),
            0,
        );
    }
    if state.failed == DropReason::RingFull as u32 {
        count_drop(DropReason::RingFull);
    } else if state.failed != u32::MAX {
        debug!(
            ctx,
            "SSL call on {:x}: plaintext at offset {} of {} cannot be read",
            call.ssl,
            state.offset,
            moved
        );
        count_drop(DropReason::CopyFailed);
    } else if state.offset < moved {
        count_drop(DropReason::ChunkCap);
    }
    if state.offset < moved {
        let key = ConnKey {
            tgid: (pid_tgid >> 32) as u32,
            pad: 0,
            ssl: call.ssl,
        };
        count_lost(&key, moved - state.offset);
    }
}

/// One `bpf_loop` iteration: emits chunk `index`; returns 1 to stop. The
/// offset is derived from `index`, not carried in the state, so the verifier
/// sees one imprecise iteration and converges instead of walking all of them.
extern "C" fn chunk_step(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `ChunkLoop` on the caller's stack.
    let state = unsafe { &mut *ctx.cast::<ChunkLoop>() };
    let offset = u64::from(index) * CHUNK_SIZE as u64;
    if offset >= state.moved {
        return 1;
    }
    let mut len = state.moved - offset;
    if len > CHUNK_SIZE as u64 {
        len = CHUNK_SIZE as u64;
    }
    match emit_chunk(&state.call, state.pid_tgid, state.moved, offset, len) {
        Ok(()) => {
            state.offset = offset + len;
            0
        }
        Err(reason) => {
            state.failed = reason as u32;
            1
        }
    }
}

#[inline(never)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "callers pass at most CHUNK_SIZE bytes; the clamp after the cast is the bound the verifier checks"
)]
fn emit_chunk(
    call: &SslCall,
    pid_tgid: u64,
    moved: u64,
    offset: u64,
    len: u64,
) -> Result<(), DropReason> {
    let mut len = len as u32;
    if len > CHUNK_SIZE as u32 {
        len = CHUNK_SIZE as u32;
    }
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        return Err(DropReason::RingFull);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at an exclusive ring-buffer reservation of
    // `size_of::<DataEvent>()` bytes; `len` is clamped to the data array's size.
    let copied = unsafe {
        (*event).header = header(EventKind::Data);
        (*event).header.tgid = (pid_tgid >> 32) as u32;
        (*event).ssl = call.ssl;
        (*event).call_len = moved;
        (*event).offset = offset;
        (*event).start_ns = call.start_ns;
        (*event).direction = call.direction;
        (*event).len = len;
        (*event).fd = call.fd;
        (*event).pad = 0;
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
pub(super) fn batched_wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA.into()) > RING_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

#[expect(
    clippy::unnecessary_wraps,
    reason = "every entry point wraps a fallible try_* function, this one included"
)]
fn try_ssl_ctrl(ctx: &ProbeContext) -> Result<(), i64> {
    if ctx.arg::<i32>(1) != Some(SSL_CTRL_SET_TLSEXT_HOSTNAME) || !is_traced() {
        return Ok(());
    }
    let (Some(ssl), Some(name)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3)) else {
        return Ok(());
    };
    let Some(mut entry) = EVENTS.reserve::<SniEvent>(0) else {
        count_drop(DropReason::RingFull);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: exclusive reservation of `size_of::<SniEvent>()` bytes.
    let read = unsafe {
        (*event).header = header(EventKind::Sni);
        (*event).ssl = ssl;
        (*event).name = [0; SNI_LEN];
        bpf_probe_read_user_str_bytes(name as *const u8, &mut (*event).name).map(<[u8]>::len)
    };
    if read.is_ok() {
        entry.submit(0);
    } else {
        entry.discard(0);
        debug!(ctx, "SSL_ctrl on {:x}: the host name cannot be read", ssl);
        count_drop(DropReason::CopyFailed);
    }
    Ok(())
}
