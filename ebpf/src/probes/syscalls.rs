//! Syscall tracepoints (`syscalls/sys_enter_*`, `syscalls/sys_exit_*`): a program for
//! each set of followed syscalls ([`llmsim_ebpf_common::syscall`] lists them), attached
//! to each one's tracepoint. They add what the TLS probes cannot see: the socket fd
//! behind an `SSL_*` call (a nested read or write on the same thread), connect
//! destinations, and (through `process.rs`) a new process's first syscall, where it is
//! held; they drive the plaintext capture of selected plain TCP destinations
//! (`plain.rs`): a socket I/O syscall outside any `SSL_*` call is that path's; and they
//! follow `bind()` and `accept()` on app ports (`accept.rs`).
//!
//! Attaching any syscall tracepoint sends every syscall of every process on the
//! machine through the kernel's slow syscall path, whoever the capture targets (these
//! kernels offer no fentry on one syscall's function). A syscall tracepoint then tests
//! the syscall's bit and runs no program for one not followed, where a raw `sys_enter`
//! tracepoint would run its program on each. Only [`sys_enter`] and [`sys_enter_close`]
//! are attached for the whole capture: everything they need is known at a call's
//! entry, a connect's destination included. [`sys_exit`] is attached only for what
//! needs a result (the agent's `Probes::need_exits`): the plain path's byte counts and
//! an accepted socket.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use llmsim_ebpf_common::{
    ConnectEvent, DropReason, EventKind,
    syscall::{
        ACCEPT, ACCEPT4, BIND, CLOSE, CONNECT, SOCKET_IO, TRACEPOINT_ARGS_OFFSET,
        TRACEPOINT_NR_OFFSET,
    },
};

use super::{accept, header, hello, plain, process};
use crate::{
    filter::is_traced,
    maps::{EVENTS, count_drop, current_ssl_call},
};

pub(super) const AF_INET: u16 = 2;
pub(super) const AF_INET6: u16 = 10;

/// Entry of a socket call (`syscall::SOCKET_CALLS`; `struct trace_event_raw_sys_enter`).
#[tracepoint]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let _ = try_sys_enter(&ctx);
    0
}

/// Entry of `close()`: ends what the hello, plain and accept paths follow on the socket.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    process::on_syscall(CLOSE);
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = syscall_arg(&ctx, 0);
    plain::close(pid_tgid, fd);
    hello::close(pid_tgid, fd);
    accept::close(pid_tgid, fd);
    0
}

/// Entry of a call new tasks make first (`syscall::FIRST_CALLS`), attached while new
/// processes are held.
#[tracepoint]
pub fn sys_enter_first(ctx: TracePointContext) -> u32 {
    process::on_syscall(syscall_nr(&ctx));
    0
}

/// Exit of a followed syscall (`struct trace_event_raw_sys_exit`). Attached on demand (see above).
#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let id = syscall_nr(&ctx);
    let ret = syscall_arg(&ctx, 0).cast_signed();
    // One path per syscall: the verifier then checks each path once, not each after every
    // way through the others (which ran past its million-instruction budget).
    if is_accept(id) {
        accept::exit(bpf_get_current_pid_tgid(), ret);
    } else if SOCKET_IO.contains(&id) {
        plain::exit(bpf_get_current_pid_tgid(), ret);
    }
    0
}

/// The syscall number a syscall tracepoint passes.
#[inline(always)]
pub(super) fn syscall_nr(ctx: &TracePointContext) -> u64 {
    // SAFETY: a constant, aligned offset inside the tracepoint's record, which the
    // verifier lets a tracepoint program load directly.
    let nr = unsafe { *ctx.as_ptr().cast::<i32>().add(TRACEPOINT_NR_OFFSET / 4) };
    // A negative number (none) becomes one no syscall has.
    i64::from(nr).cast_unsigned()
}

/// Syscall argument `index` at entry, or the result (`index` 0) at exit.
#[inline(always)]
pub(super) fn syscall_arg(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: as in `syscall_nr`.
    unsafe {
        *ctx.as_ptr()
            .cast::<u64>()
            .add(TRACEPOINT_ARGS_OFFSET / 8 + index)
    }
}

/// The second and third syscall arguments: a socket call's buffer (or iovecs, or
/// `msghdr`) and its length (or iovec count).
#[inline(always)]
fn buffer_args(ctx: &TracePointContext) -> (u64, u64) {
    (syscall_arg(ctx, 1), syscall_arg(ctx, 2))
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "a syscall's fd argument is an int in a 64-bit register"
)]
fn try_sys_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let id = syscall_nr(ctx);
    process::on_syscall(id);
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = syscall_arg(ctx, 0);
    if id == CONNECT {
        if is_traced() {
            connect_enter(pid_tgid, fd, syscall_arg(ctx, 1));
        }
        return Ok(());
    }
    if id == BIND {
        if !is_traced() {
            return Ok(());
        }
        return accept::bind(pid_tgid, fd, syscall_arg(ctx, 1));
    }
    if is_accept(id) {
        accept::enter(pid_tgid, fd);
        return Ok(());
    }
    // Most socket calls on the machine are neither inside a TLS call nor on a
    // socket the hello or plain paths follow: those leave here.
    let ssl_call = current_ssl_call(pid_tgid);
    let hello = hello::watching();
    let plain = plain::selecting();
    if ssl_call.is_none() && !hello && !plain {
        return Ok(());
    }
    if hello {
        let _ = hello::first_write(id, pid_tgid, fd, || buffer_args(ctx));
    }
    let Some(call) = ssl_call else {
        return plain::enter(id, pid_tgid, fd, || buffer_args(ctx));
    };
    // SAFETY: a live value of this thread's own entry.
    unsafe { (*call).fd = fd as i32 };
    Ok(())
}

/// Whether syscall `id` is `accept` or `accept4`.
#[inline(always)]
fn is_accept(id: u64) -> bool {
    id == ACCEPT || id == ACCEPT4
}

/// The entry of a `connect()`: its destination, for the hello and plain paths and
/// userspace. A BPF subprogram of its own, so its locals are not in `sys_enter`'s frame:
/// the plain path's chain of calls is at the verifier's 512-byte combined stack limit,
/// which 6.1 enforces.
#[inline(never)]
fn connect_enter(pid_tgid: u64, fd: u64, sockaddr: u64) {
    let _ = try_connect_enter(pid_tgid, fd, sockaddr);
}

#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "connect(2)'s fd argument is an int in a 64-bit register"
)]
fn try_connect_enter(pid_tgid: u64, fd: u64, sockaddr: u64) -> Result<(), i64> {
    hello::on_connect(pid_tgid, fd);
    // SAFETY: user pointers read fault-tolerantly.
    let family = unsafe { bpf_probe_read_user(sockaddr as *const u16) }?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let port = u16::from_be(unsafe { bpf_probe_read_user((sockaddr + 2) as *const u16) }?);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let v4 = unsafe { bpf_probe_read_user((sockaddr + 4) as *const [u8; 4]) }?;
        addr[..4].copy_from_slice(&v4);
    } else {
        addr = unsafe { bpf_probe_read_user((sockaddr + 8) as *const [u8; 16]) }?;
    }
    plain::on_connect(pid_tgid, fd, family, port, &addr);
    // Written in place in the ring rather than built on the stack.
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_drop(DropReason::RingFull);
        return Ok(());
    };
    entry.write(ConnectEvent {
        header: header(EventKind::Connect),
        fd: fd as i32,
        family,
        port,
        addr,
    });
    entry.submit(0);
    Ok(())
}
