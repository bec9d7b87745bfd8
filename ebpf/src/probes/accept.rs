//! Which sockets of the traced processes serve requests on an app port
//! (`--app-port`, the `APP_PORTS` map).
//!
//! A traced `bind()` of a socket to an app port (any address, IPv4 or IPv6) marks
//! it (`tgid`, fd) as an app listener (at the entry, from `syscalls.rs`); an
//! `accept()`/`accept4()` on an app listener that returns a socket (seen by
//! [`exit`], from `sys_exit`) tells userspace with an [`AcceptEvent`], and hands the
//! socket to the plain path (`plain.rs`), which copies its reads (the requests) and
//! writes (the responses) when its first read starts an HTTP request. A TLS server's
//! socket (its first read is a `ClientHello`) is let go there; its plaintext comes
//! from the `SSL_*` probes, whose records name the socket's fd, so userspace knows
//! the connection by the accept event either way. `close()` forgets a listener. A
//! listener bound before the capture began, or bound by another process than the
//! one accepting, is not seen.

use aya_ebpf::helpers::bpf_probe_read_user;
use llmsim_ebpf_common::{AcceptEvent, DropReason, EventKind};

use super::{
    header,
    plain::{self, socket_key},
    syscalls::{AF_INET, AF_INET6},
};
use crate::maps::{ACCEPTS, APP_LISTENERS, APP_PORTS, EVENTS, count_drop};

/// Entry of `bind(fd, addr, len)` in a traced process: marks `fd` an app listener
/// when `addr` names an app port, and forgets an old mark of the fd otherwise.
#[inline(always)]
pub fn bind(pid_tgid: u64, fd: u64, addr: u64) -> Result<(), i64> {
    let key = socket_key(pid_tgid, fd);
    // SAFETY: user pointers read fault-tolerantly.
    let family = unsafe { bpf_probe_read_user(addr as *const u16) }?;
    let port = u16::from_be(unsafe { bpf_probe_read_user((addr + 2) as *const u16) }?);
    // SAFETY: the value is only tested for presence.
    if (family == AF_INET || family == AF_INET6) && unsafe { APP_PORTS.get(&port) }.is_some() {
        let _ = APP_LISTENERS.insert(&key, &0, 0);
    } else {
        let _ = APP_LISTENERS.remove(&key);
    }
    Ok(())
}

/// Entry of `accept(fd, ...)` or `accept4(fd, ...)`: remembers the call when `fd`
/// is an app listener.
#[inline(always)]
pub fn enter(pid_tgid: u64, fd: u64) {
    // SAFETY: the value is only tested for presence.
    if unsafe { APP_LISTENERS.get(&socket_key(pid_tgid, fd)) }.is_some() {
        let _ = ACCEPTS.insert(&pid_tgid, &0, 0);
    }
}

/// Exit of `accept()` or `accept4()`: one remembered by [`enter`] that returned a
/// socket makes it inbound. A BPF subprogram of its own, so `sys_exit`'s other paths
/// are verified without it.
#[inline(never)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "accept(2) returns an int in a 64-bit register"
)]
pub fn exit(pid_tgid: u64, ret: i64) {
    // SAFETY: the value is only tested for presence.
    if unsafe { ACCEPTS.get(&pid_tgid) }.is_none() {
        return;
    }
    let _ = ACCEPTS.remove(&pid_tgid);
    if ret < 0 {
        return;
    }
    plain::on_accept(pid_tgid, ret.cast_unsigned());
    let event = AcceptEvent {
        header: header(EventKind::Accept),
        fd: ret as i32,
        pad: 0,
    };
    if EVENTS.output(&event, 0).is_err() {
        count_drop(DropReason::RingFull);
    }
}

/// `close(fd)`: an app listener's mark goes.
#[inline(always)]
pub fn close(pid_tgid: u64, fd: u64) {
    let _ = APP_LISTENERS.remove(&socket_key(pid_tgid, fd));
}
