//! The first bytes of every connection a traced process opens, when they are
//! a TLS handshake record: userspace parses the `ClientHello`'s server name from
//! them and reports each TLS connection no library probe decrypted (capture's
//! coverage report); the peer is the one of the socket's connect event. Called
//! from the syscall tracepoints (`syscalls.rs`): a traced `connect()` makes
//! the socket a candidate, and its first
//! write/writev/sendto/sendmsg is looked at once, at syscall entry, whether or
//! not a TLS library call is in progress; `close()` forgets a socket never written.

use aya_ebpf::helpers::{
    bpf_probe_read_user, generated::bpf_probe_read_user as probe_read_user_raw,
};
use llmsim_ebpf_common::{
    DropReason, EventKind, TLS_HELLO_LEN, TlsHelloEvent,
    syscall::{SENDMSG, SENDTO, WRITE, WRITEV},
};

use super::{header, plain::socket_key};
use crate::maps::{
    Counted, EVENTS, TLS_CANDIDATES, count_drop, holds_entries, insert_counted, remove_counted,
};

/// `offsetof(struct msghdr, msg_iov)` on `x86_64`.
const MSG_IOV: u64 = 16;
/// The TLS record content type of a handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Whether some socket's first write is still to be looked at: one array read.
#[inline(always)]
pub fn watching() -> bool {
    holds_entries(Counted::TlsCandidates)
}

/// A traced thread connects `fd`: its first write is to be looked at.
#[inline(always)]
pub fn on_connect(pid_tgid: u64, fd: u64) {
    insert_counted(
        &TLS_CANDIDATES,
        Counted::TlsCandidates,
        &socket_key(pid_tgid, fd),
        &0,
    );
}

/// `close(fd)`: a socket never written is no candidate any more.
#[inline(always)]
pub fn close(pid_tgid: u64, fd: u64) {
    remove_counted(
        &TLS_CANDIDATES,
        Counted::TlsCandidates,
        &socket_key(pid_tgid, fd),
    );
}

/// Entry of socket I/O syscall `id` on `fd`: on a candidate's first write, sends
/// its first [`TLS_HELLO_LEN`] bytes when they start a TLS handshake record.
/// `read_args` reads the second and third arguments (buffer, iovec array or
/// `msghdr`; length or iovec count), only then.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "a syscall's fd argument is an int; the length is clamped before the cast matters"
)]
pub fn first_write(
    id: u64,
    pid_tgid: u64,
    fd: u64,
    read_args: impl FnOnce() -> (u64, u64),
) -> Result<(), i64> {
    if !matches!(id, WRITE | WRITEV | SENDTO | SENDMSG) {
        return Ok(());
    }
    if !remove_counted(
        &TLS_CANDIDATES,
        Counted::TlsCandidates,
        &socket_key(pid_tgid, fd),
    ) {
        return Ok(());
    }
    let (pointer, count) = read_args();
    let (buf, len) = first_buffer(id, pointer, count)?;
    // SAFETY: a user pointer, read fault-tolerantly.
    let first = unsafe { bpf_probe_read_user(buf as *const u8) }?;
    if first != HANDSHAKE_RECORD {
        return Ok(());
    }
    // An iovec's length lies in stack memory a helper wrote, whose reloads 6.1's
    // verifier does not bound even after a comparison: loaded once here, the clamp
    // below bounds the register that is passed on.
    // SAFETY: a live local.
    let len = unsafe { core::ptr::read_volatile(&raw const len) };
    let mut n = if len > TLS_HELLO_LEN as u64 {
        TLS_HELLO_LEN as u32
    } else {
        len as u32
    };
    if n > TLS_HELLO_LEN as u32 {
        n = TLS_HELLO_LEN as u32;
    }
    let Some(mut entry) = EVENTS.reserve::<TlsHelloEvent>(0) else {
        count_drop(DropReason::RingFull);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at an exclusive ring-buffer reservation of
    // `size_of::<TlsHelloEvent>()` bytes; `n` is clamped to the data array's size.
    let copied = unsafe {
        (*event).header = header(EventKind::TlsHello);
        (*event).fd = fd as i32;
        (*event).len = n;
        probe_read_user_raw((*event).data.as_mut_ptr().cast(), n, buf as *const _)
    };
    if copied != 0 {
        entry.discard(0);
        count_drop(DropReason::CopyFailed);
        return Ok(());
    }
    entry.submit(0);
    Ok(())
}

/// The first buffer (address and length) of write syscall `id`, from its second and
/// third arguments: the buffer itself, the first of `writev`'s iovecs, or the first
/// iovec of `sendmsg`'s `msghdr`.
#[inline(always)]
pub(super) fn first_buffer(id: u64, pointer: u64, count: u64) -> Result<(u64, u64), i64> {
    // SAFETY: user pointers read fault-tolerantly.
    Ok(match id {
        WRITEV => unsafe { bpf_probe_read_user(pointer as *const [u64; 2]) }?.into(),
        SENDMSG => {
            let iov = unsafe { bpf_probe_read_user((pointer + MSG_IOV) as *const u64) }?;
            unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }?.into()
        }
        _ => (pointer, count),
    })
}
