//! Plaintext TCP from the socket syscalls, for destinations userspace selected in
//! `PLAIN_DESTINATIONS` (`--host HOST:PORT`, `--any-host`): local model servers
//! (Ollama, vLLM, llama.cpp) speak plain HTTP, so there is no TLS library to probe.
//! Called from the syscall tracepoints (`syscalls.rs`), not hooks of their own.
//!
//! A traced process's `connect()` to a selected destination marks the socket
//! (`tgid`, fd) with a connection id; its read/write/readv/writev/sendto/recvfrom/
//! sendmsg/recvmsg calls are then copied on return, `ret` bytes from the buffer (or
//! iovecs) the call was given, through the one emit path the TLS probes use
//! (`crate::emit`), which numbers each call and accounts for what it cannot
//! deliver; its `close()` ends the connection there. Everything else costs one map
//! lookup, and one array read while no socket is selected. An HTTP client writes
//! first, and its first byte starts a method (or the HTTP/2 preface): an uppercase
//! ASCII letter. A socket whose first copied call is a
//! read, or whose first write starts with anything else, is unmarked at once; that
//! includes every TLS connection (a `ClientHello` record starts with `0x16`), whose
//! plaintext is read at the TLS library, never as ciphertext here.
//!
//! A socket a traced process accepted on an app port (`accept.rs`) is marked the
//! same way, inbound: there the request side is the reads, so its first copied call
//! must be a read that starts a method.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_loop},
};
use llmsim_ebpf_common::{
    Direction, DropReason, PLAIN_CONNECTION, PlainDestination,
    syscall::{READV, RECVMSG, SENDMSG, SENDTO, WRITE, WRITEV},
};

use crate::{
    emit::{self, Call},
    maps::{
        Counted, PLAIN_CALLS, PLAIN_DESTINATIONS, PLAIN_SOCKETS, PlainCall, PlainSocket,
        holds_entries, insert_counted, remove_counted,
    },
};

/// Most iovecs of one `readv`/`writev`/`sendmsg`/`recvmsg` copied; the bytes of the
/// rest are lost, for [`DropReason::ChunkCap`] (HTTP clients pass two or three).
const MAX_IOVECS: u32 = 8;
/// `offsetof(struct msghdr, msg_iov)` and `msg_iovlen` on `x86_64`.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// The `PLAIN_SOCKETS` key of `fd` in the current process.
#[inline(always)]
pub(super) fn socket_key(pid_tgid: u64, fd: u64) -> u64 {
    (pid_tgid & !0xffff_ffff) | (fd & 0xffff_ffff)
}

/// Whether some socket is selected: one array read.
#[inline(always)]
pub fn selecting() -> bool {
    holds_entries(Counted::PlainSockets)
}

/// A traced thread connected `fd` to `addr`:`port`: marks the socket when the
/// destination is selected, and forgets an old mark of the same fd otherwise.
#[inline(always)]
pub fn on_connect(pid_tgid: u64, fd: u64, family: u16, port: u16, addr: &[u8; 16]) {
    let key = socket_key(pid_tgid, fd);
    let exact = PlainDestination {
        addr: *addr,
        port,
        family,
    };
    let any_address = PlainDestination {
        addr: [0; 16],
        port,
        family: 0,
    };
    // SAFETY: the values are only tested for presence.
    let selected = unsafe {
        PLAIN_DESTINATIONS.get(&exact).is_some()
            || PLAIN_DESTINATIONS.get(&any_address).is_some()
            || PLAIN_DESTINATIONS
                .get(&PlainDestination::default())
                .is_some()
    };
    if !selected {
        remove_counted(&PLAIN_SOCKETS, Counted::PlainSockets, &key);
        return;
    }
    mark(key, 0);
}

/// A traced thread accepted `fd` on an app port: marks the socket inbound.
#[inline(always)]
pub fn on_accept(pid_tgid: u64, fd: u64) {
    mark(socket_key(pid_tgid, fd), 1);
}

/// Marks a socket with a new connection id.
#[inline(always)]
fn mark(key: u64, inbound: u32) {
    let socket = PlainSocket {
        // SAFETY: plain helper call without arguments.
        conn: PLAIN_CONNECTION | unsafe { bpf_ktime_get_ns() },
        checked: 0,
        inbound,
    };
    insert_counted(&PLAIN_SOCKETS, Counted::PlainSockets, &key, &socket);
}

/// Entry of a socket I/O syscall `id` outside any TLS call: remembers the call when
/// `fd` is a selected socket. `read_args` reads its second and third arguments
/// (the buffer, iovec array or `msghdr`; the length or iovec count), only then.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "a syscall's fd argument is an int in a 64-bit register"
)]
pub fn enter(
    id: u64,
    pid_tgid: u64,
    fd: u64,
    read_args: impl FnOnce() -> (u64, u64),
) -> Result<(), i64> {
    if !selecting() {
        return Ok(());
    }
    // SAFETY: the value is copied out.
    let Some(socket) = (unsafe { PLAIN_SOCKETS.get(&socket_key(pid_tgid, fd)) }).copied() else {
        return Ok(());
    };
    let (pointer, count) = read_args();
    // The rest are read (0) and recvfrom (45), whose buffer is `pointer` too.
    let direction = match id {
        WRITE | WRITEV | SENDTO | SENDMSG => Direction::Write,
        _ => Direction::Read,
    };
    let (buf, iovcnt) = match id {
        READV | WRITEV => (pointer, count),
        SENDMSG | RECVMSG => {
            // SAFETY: user pointers read fault-tolerantly.
            let iov = unsafe { bpf_probe_read_user((pointer + MSG_IOV) as *const u64) }?;
            let iovlen = unsafe { bpf_probe_read_user((pointer + MSG_IOVLEN) as *const u64) }?;
            (iov, iovlen)
        }
        _ => (pointer, 0),
    };
    let tgid = (pid_tgid >> 32) as u32;
    let call = PlainCall {
        call: Call {
            conn: socket.conn,
            buf,
            // SAFETY: plain helper call without arguments.
            start_ns: unsafe { bpf_ktime_get_ns() },
            seq: emit::begin(tgid, socket.conn, direction as u32),
            direction: direction as u32,
            fd: fd as i32,
        },
        syscall: id,
        iovcnt,
    };
    // An LRU map evicts instead of refusing; a call it refuses all the same
    // is lost whole, its length unknown.
    if PLAIN_CALLS.insert(&pid_tgid, &call, 0).is_err() {
        emit::lose_whole(tgid, &call.call, DropReason::MissingEntry, 0);
    }
    Ok(())
}

/// Exit of a syscall on this thread: hands what a remembered call moved to
/// [`emit`], or gives its sequence number back when it moved nothing.
#[inline(always)]
pub fn exit(pid_tgid: u64, ret: i64) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(plain) = (unsafe { PLAIN_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = PLAIN_CALLS.remove(&pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    let call = plain.call;
    let key = socket_key(pid_tgid, call.fd.cast_unsigned().into());
    let socket = PLAIN_SOCKETS.get_ptr_mut(&key);
    let (Some(socket), true) = (socket, ret > 0) else {
        emit::cancel(tgid, &call);
        return;
    };
    let moved = ret.cast_unsigned();
    let iovecs = matches!(plain.syscall, READV | WRITEV | SENDMSG | RECVMSG);
    // SAFETY: a live map value; only this process's threads use its sockets.
    if unsafe { (*socket).checked } == 0 {
        // SAFETY: as above.
        let request_side = if unsafe { (*socket).inbound } == 0 {
            Direction::Write
        } else {
            Direction::Read
        };
        let first = if call.direction != request_side as u32 {
            Ok(0)
        } else if iovecs {
            // SAFETY: user pointers read fault-tolerantly.
            unsafe { bpf_probe_read_user(call.buf as *const Iovec) }
                .and_then(|iov| unsafe { bpf_probe_read_user(iov.base as *const u8) })
        } else {
            // SAFETY: as above.
            unsafe { bpf_probe_read_user(call.buf as *const u8) }
        };
        let Ok(first) = first else {
            // Nothing of the connection was emitted yet: its next write is
            // taken for its first.
            emit::cancel(tgid, &call);
            return;
        };
        if !first.is_ascii_uppercase() {
            remove_counted(&PLAIN_SOCKETS, Counted::PlainSockets, &key);
            emit::forget(tgid, call.conn);
            return;
        }
        // SAFETY: as above.
        unsafe { (*socket).checked = 1 };
    }
    if !iovecs {
        emit::deliver::<false>(&call, pid_tgid, moved);
        return;
    }
    let mut state = IovecLoop {
        call,
        pid_tgid,
        iov: call.buf,
        iovcnt: plain.iovcnt,
        left: moved,
        emitted: 0,
        failed: DropReason::ChunkCap as u32,
    };
    // SAFETY: the callback is a BPF subprogram taking `&mut IovecLoop` as its context.
    unsafe {
        bpf_loop(
            MAX_IOVECS,
            iovec_step as *mut c_void,
            (&raw mut state).cast(),
            0,
        );
    }
    if state.left > 0 {
        let mut unsent = call;
        if state.emitted != 0 {
            unsent.seq = emit::begin(tgid, call.conn, call.direction);
        }
        let reason = if state.failed == DropReason::CopyFailed as u32 {
            DropReason::CopyFailed
        } else {
            DropReason::ChunkCap
        };
        emit::lose_whole(tgid, &unsent, reason, state.left);
    }
}

/// State of the iovec loop of [`exit`], shared with the `bpf_loop` callback.
#[repr(C)]
struct IovecLoop {
    /// The call; its sequence number is the first emitted iovec's.
    call: Call,
    pid_tgid: u64,
    /// The iovec array.
    iov: u64,
    iovcnt: u64,
    /// Bytes of the call not emitted yet.
    left: u64,
    /// Nonzero once an iovec was handed to [`emit::deliver`].
    emitted: u32,
    /// The [`DropReason`] of the bytes left when the loop stops.
    failed: u32,
}

/// One `bpf_loop` iteration: emits iovec `index` as a call of its own, in
/// order, with a sequence number of its own; returns 1 to stop.
extern "C" fn iovec_step(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `IovecLoop` on the caller's stack.
    let state = unsafe { &mut *ctx.cast::<IovecLoop>() };
    let index = u64::from(index);
    if index >= state.iovcnt || state.left == 0 {
        return 1;
    }
    // SAFETY: user pointers read fault-tolerantly.
    let Ok(iov) = (unsafe { bpf_probe_read_user((state.iov + index * 16) as *const Iovec) }) else {
        state.failed = DropReason::CopyFailed as u32;
        return 1;
    };
    let len = if iov.len < state.left {
        iov.len
    } else {
        state.left
    };
    if len > 0 {
        let mut call = state.call;
        call.buf = iov.base;
        if state.emitted != 0 {
            call.seq = emit::begin((state.pid_tgid >> 32) as u32, call.conn, call.direction);
        }
        state.emitted = 1;
        emit::deliver::<false>(&call, state.pid_tgid, len);
        state.left -= len;
    }
    0
}

/// `close(fd)`: a selected socket's connection is over.
#[inline(always)]
pub fn close(pid_tgid: u64, fd: u64) {
    if !selecting() {
        return;
    }
    let key = socket_key(pid_tgid, fd);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(socket) = (unsafe { PLAIN_SOCKETS.get(&key) }).copied() else {
        return;
    };
    remove_counted(&PLAIN_SOCKETS, Counted::PlainSockets, &key);
    emit::end(socket.conn);
}
