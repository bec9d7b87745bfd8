//! Uprobes on OpenSSL's plaintext API (also BoringSSL-compatible builds that
//! export the same names). Entry probes remember the call's arguments and its
//! sequence number per thread; one return probe hands what the call actually
//! moved to [`crate::emit`], which copies it into the ring buffer in
//! [`llmsim_ebpf_common::CHUNK_SIZE`] pieces, so calls of many MiB arrive whole,
//! and accounts for whatever cannot be delivered.
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
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::debug;
use llmsim_ebpf_common::{Direction, DropReason, EventKind, SNI_LEN, SniEvent};

use super::{header, uprobe_pair};
use crate::{
    emit::{self, Call},
    filter::is_traced,
    maps::{
        CallKey, EVENTS, MAX_CALL_LEVELS, SSL_CALL_LEVELS, SSL_CALLS, SslCall, call_levels,
        count_drop, innermost_call, write_over,
    },
};

/// `SSL_ctrl` command behind the `SSL_set_tlsext_host_name` macro.
const SSL_CTRL_SET_TLSEXT_HOSTNAME: i32 = 55;

uprobe_pair! {
    /// `int SSL_write(SSL *ssl, const void *buf, int num)`; OpenSSL >= 0.9.8, kernel >= 5.8 (ring buffer).
    uprobe,
    ssl_write,
    ssl_write_multi,
    |ctx: ProbeContext| {
        enter(&ctx, Direction::Write, false);
        0
    }
}

uprobe_pair! {
    /// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`; OpenSSL >= 1.1.1.
    uprobe,
    ssl_write_ex,
    ssl_write_ex_multi,
    |ctx: ProbeContext| {
        enter(&ctx, Direction::Write, true);
        0
    }
}

uprobe_pair! {
    /// `int SSL_read(SSL *ssl, void *buf, int num)`; OpenSSL >= 0.9.8.
    uprobe,
    ssl_read,
    ssl_read_multi,
    |ctx: ProbeContext| {
        enter(&ctx, Direction::Read, false);
        0
    }
}

uprobe_pair! {
    /// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`; OpenSSL >= 1.1.1.
    uprobe,
    ssl_read_ex,
    ssl_read_ex_multi,
    |ctx: ProbeContext| {
        enter(&ctx, Direction::Read, true);
        0
    }
}

uprobe_pair! {
    /// Return of all four functions above: `int`, the byte count for the plain
    /// variants; for the `_ex` variants and the worker they call, positive on
    /// success (1 for the `_ex` variants), with the count in `*written`/`*readbytes`.
    uretprobe,
    ssl_return,
    ssl_return_multi,
    |ctx: RetProbeContext| {
        let _ = try_ssl_return(&ctx);
        0
    }
}

uprobe_pair! {
    /// The instruction a `call` to the worker returns to, inside `SSL_read*` or
    /// `SSL_write*`, while `rax` still holds the worker's `int` result (the
    /// entry was the `call` itself, probed with [`ssl_read_ex`] or [`ssl_write_ex`]).
    /// A plain uprobe: the registers are those of the return, as for a uretprobe.
    uprobe,
    ssl_call_return,
    ssl_call_return_multi,
    |ctx: ProbeContext| {
        let _ = try_ssl_return(&RetProbeContext::new(ctx.regs.cast()));
        0
    }
}

uprobe_pair! {
    /// `long SSL_ctrl(SSL *s, int cmd, long larg, void *parg)`; reports the SNI
    /// set by `SSL_set_tlsext_host_name(s, name)`.
    uprobe,
    ssl_ctrl,
    ssl_ctrl_multi,
    |ctx: ProbeContext| {
        let _ = try_ssl_ctrl(&ctx);
        0
    }
}

uprobe_pair! {
    /// `void SSL_free(SSL *ssl)`: ends the connection, so an exchange waiting for
    /// its end (a stream the client stopped reading) is written while the process
    /// lives, and a later connection reusing the pointer starts afresh.
    uprobe,
    ssl_free,
    ssl_free_multi,
    |ctx: ProbeContext| {
        if !is_traced() {
            return 0;
        }
        if let Some(ssl) = ctx.arg::<u64>(0) {
            emit::end(ssl);
        }
        0
    }
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
    let pid_tgid = bpf_get_current_pid_tgid();
    let (levels, mut level) = call_levels(pid_tgid);
    if let Some(outer) = innermost_call(pid_tgid, level) {
        // SAFETY: a live value of this thread's own entry.
        unsafe {
            if (*outer).ssl == ssl && (*outer).direction == direction as u32 && (*outer).done == 0 {
                // One call through two probed functions: the innermost
                // return emits it, under the sequence number it has.
                (*outer).buf = buf;
                (*outer).out_len = out_len;
                (*outer).merged += 1;
                return;
            }
        }
    }
    if level >= MAX_CALL_LEVELS {
        level = 0;
    }
    let call = SslCall {
        ssl,
        buf,
        out_len,
        // SAFETY: plain helper call without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        seq: emit::begin((pid_tgid >> 32) as u32, ssl, direction as u32),
        direction: direction as u32,
        fd: -1,
        merged: 0,
        done: 0,
    };
    let key = CallKey {
        pid_tgid,
        level: u64::from(level),
    };
    write_over(&SSL_CALLS, &key, SSL_CALLS.get_ptr_mut(&key), &call);
    write_over(&SSL_CALL_LEVELS, &pid_tgid, levels, &(level + 1));
}

fn try_ssl_return(ctx: &RetProbeContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (levels_entry, levels) = call_levels(pid_tgid);
    // Ends the innermost call; its slot stays for the next one.
    let pop = || {
        if let Some(levels_entry) = levels_entry {
            // SAFETY: as above.
            unsafe { *levels_entry = levels - 1 };
        }
    };
    let Some(entry) = innermost_call(pid_tgid, levels) else {
        if levels != 0 {
            pop();
        }
        if is_traced() {
            emit::missing_entry();
        }
        return Ok(());
    };
    // SAFETY: a live value of this thread's own entry, copied before it changes.
    let call = unsafe { *entry };
    if call.merged > 0 {
        // SAFETY: as above.
        unsafe {
            (*entry).merged -= 1;
            (*entry).done = 1;
        }
    } else {
        pop();
    }
    if call.done != 0 {
        return Ok(());
    }
    let tgid = (pid_tgid >> 32) as u32;
    let plaintext = Call {
        conn: call.ssl,
        buf: call.buf,
        start_ns: call.start_ns,
        seq: call.seq,
        direction: call.direction,
        fd: call.fd,
    };
    let ret: i64 = ctx.ret::<i32>().into();
    if ret <= 0 {
        emit::cancel(tgid, &plaintext);
        return Ok(());
    }
    let moved = if call.out_len != 0 {
        // SAFETY: reading a user pointer with the fault-tolerant helper.
        unsafe { bpf_probe_read_user(call.out_len as *const u64) }.map_err(|_| {
            debug!(ctx, "SSL call on {:x}: its length cannot be read", call.ssl);
            emit::lose_whole(tgid, &plaintext, DropReason::CopyFailed, 0);
            1i64
        })?
    } else {
        ret.cast_unsigned()
    };
    if call.fd < 0 {
        debug!(
            ctx,
            "SSL call on {:x}: no socket syscall seen, its connection is unknown", call.ssl
        );
    }
    if let Some(DropReason::CopyFailed) = emit::emit(&plaintext, pid_tgid, moved) {
        debug!(
            ctx,
            "SSL call on {:x}: its plaintext cannot be read", call.ssl
        );
    }
    Ok(())
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
