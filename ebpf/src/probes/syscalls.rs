//! Raw tracepoints on syscall entry and exit (kernel >= 4.17; no
//! tracefs needed). They add what the TLS probes cannot see: the socket fd
//! behind an `SSL_*` call (a nested read/write syscall on the same thread),
//! connect destinations, and (through `process.rs`) a new process's first
//! syscall, where it is held; they drive the plaintext capture of selected
//! plain TCP destinations (`plain.rs`): a socket I/O syscall outside any
//! `SSL_*` call is that path's; and they follow `bind()` and `accept()` on app
//! ports (`accept.rs`).
//!
//! Attaching either tracepoint sends every syscall of every process on the
//! machine through the kernel's slow syscall path and runs the program on it,
//! whoever the capture targets; the tracepoint itself cannot be narrowed (these
//! kernels offer no fentry on one syscall's function). So both programs leave a
//! syscall they do not follow after reading its number, and only `sys_enter` is
//! always attached: everything it needs is known at a call's entry, a connect's
//! destination included. [`sys_exit`] is attached only for what needs a result
//! (the agent's `Probes::need_exits`): the plain path's byte counts and an
//! accepted socket.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use llmsim_ebpf_common::{ConnectEvent, DropReason, EventKind};

use super::{accept, header, hello, plain, process};
use crate::{
    filter::is_traced,
    maps::{EVENTS, count_drop, current_ssl_call},
};

/// `x86_64` syscall numbers of the calls a TLS library makes on its socket.
const SOCKET_IO_SYSCALLS: [u64; 8] = [0, 1, 19, 20, 44, 45, 46, 47]; // read write readv writev sendto recvfrom sendmsg recvmsg
const SYS_CONNECT: u64 = 42;
const SYS_ACCEPT: u64 = 43;
const SYS_BIND: u64 = 49;
const SYS_ACCEPT4: u64 = 288;
const SYS_CLOSE: u64 = 3;
pub(super) const AF_INET: u16 = 2;
pub(super) const AF_INET6: u16 = 10;

/// `sys_enter(struct pt_regs *regs, long id)`; kernel >= 4.17.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_enter(&ctx);
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`; kernel >= 4.17. Attached on demand (see above).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_exit(&ctx);
    0
}

/// The first syscall argument from a kernel `pt_regs`: the fd of a socket call.
#[inline(always)]
fn syscall_fd(regs: *const pt_regs) -> Result<u64, i64> {
    // SAFETY: `regs` is the kernel pointer the tracepoint passes; read fault-tolerantly.
    Ok(unsafe { bpf_probe_read_kernel(&raw const (*regs).rdi) }?)
}

/// The first two syscall arguments from a kernel `pt_regs`.
#[inline(always)]
fn syscall_args(regs: *const pt_regs) -> Result<(u64, u64), i64> {
    // SAFETY: `regs` is the kernel pointer the tracepoint passes; read fault-tolerantly.
    unsafe {
        let a0 = bpf_probe_read_kernel(&raw const (*regs).rdi)?;
        let a1 = bpf_probe_read_kernel(&raw const (*regs).rsi)?;
        Ok((a0, a1))
    }
}

/// The second and third syscall arguments from a kernel `pt_regs`: a socket
/// call's buffer (or iovecs, or `msghdr`) and its length (or iovec count).
#[inline(always)]
fn buffer_args(regs: *const pt_regs) -> Result<(u64, u64), i64> {
    // SAFETY: as in `syscall_args`.
    unsafe {
        let a1 = bpf_probe_read_kernel(&raw const (*regs).rsi)?;
        let a2 = bpf_probe_read_kernel(&raw const (*regs).rdx)?;
        Ok((a1, a2))
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "a syscall's fd argument is an int in a 64-bit register"
)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), i64> {
    let id: u64 = ctx.arg(1);
    if process::new_tasks_noted() {
        process::on_syscall(id);
    }
    let connect = id == SYS_CONNECT;
    let close = id == SYS_CLOSE;
    let bind = id == SYS_BIND;
    let accept = is_accept(id);
    if !(connect || close || bind || accept || SOCKET_IO_SYSCALLS.contains(&id)) {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if connect {
        if is_traced() {
            connect_enter(pid_tgid, ctx.arg(0));
        }
        return Ok(());
    }
    if close {
        let fd = syscall_fd(ctx.arg(0))?;
        plain::close(pid_tgid, fd);
        hello::close(pid_tgid, fd);
        accept::close(pid_tgid, fd);
        return Ok(());
    }
    if bind {
        if !is_traced() {
            return Ok(());
        }
        let (fd, addr) = syscall_args(ctx.arg(0))?;
        return accept::bind(pid_tgid, fd, addr);
    }
    if accept {
        let fd = syscall_fd(ctx.arg(0))?;
        accept::enter(pid_tgid, fd);
        return Ok(());
    }
    // Most socket calls on the machine are neither inside a TLS call nor on a
    // socket the hello or plain paths follow: those leave before reading anything.
    let ssl_call = current_ssl_call(pid_tgid);
    let hello = hello::watching();
    let plain = plain::selecting();
    if ssl_call.is_none() && !hello && !plain {
        return Ok(());
    }
    let regs: *const pt_regs = ctx.arg(0);
    let fd = syscall_fd(regs)?;
    if hello {
        let _ = hello::first_write(id, pid_tgid, fd, || buffer_args(regs));
    }
    let Some(call) = ssl_call else {
        return plain::enter(id, pid_tgid, fd, || buffer_args(regs));
    };
    // SAFETY: a live value of this thread's own entry.
    unsafe { (*call).fd = fd as i32 };
    Ok(())
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the kernel pointer the tracepoint passes, read fault-tolerantly.
    let id = unsafe { bpf_probe_read_kernel(&raw const (*regs).orig_rax) }?;
    let ret: i64 = ctx.arg(1);
    // One path per syscall: the verifier then checks each path once, not each after every
    // way through the others (which ran past its million-instruction budget).
    if is_accept(id) {
        accept::exit(bpf_get_current_pid_tgid(), ret);
    } else if SOCKET_IO_SYSCALLS.contains(&id) {
        plain::exit(bpf_get_current_pid_tgid(), ret);
    }
    Ok(())
}

/// Whether syscall `id` is `accept` or `accept4`.
#[inline(always)]
fn is_accept(id: u64) -> bool {
    id == SYS_ACCEPT || id == SYS_ACCEPT4
}

/// The entry of a `connect()`: its destination, for the hello and plain paths and
/// userspace. A BPF subprogram of its own, so its locals are not in `sys_enter`'s frame:
/// the plain path's chain of calls is at the verifier's 512-byte combined stack limit,
/// which 6.1 enforces.
#[inline(never)]
fn connect_enter(pid_tgid: u64, regs: *const pt_regs) {
    let _ = try_connect_enter(pid_tgid, regs);
}

#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "connect(2)'s fd argument is an int in a 64-bit register"
)]
fn try_connect_enter(pid_tgid: u64, regs: *const pt_regs) -> Result<(), i64> {
    let (fd, sockaddr) = syscall_args(regs)?;
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
