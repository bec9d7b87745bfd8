//! Uprobes on rustls's plaintext API, in Rust executables that keep their symbols
//! (the agent's `rustls` module finds the functions by their mangled names):
//! `<rustls::conn::connection::Writer as std::io::Write>::write` and
//! `<rustls::conn::connection::Reader as std::io::Read>::read`, both
//! `fn(&mut self, buf: &[u8] / &mut [u8]) -> io::Result<usize>`: with rustc's ABI on
//! `x86_64`, `self` in `rdi`, the buffer in `rsi` and `rdx`, and the result returned in
//! `rax` (0 for `Ok`) and `rdx` (the count). Rust's ABI is not stable: this is the
//! one of the toolchain in `rust-toolchain.toml`, read from the test client's code.
//!
//! rustls works on buffers, not sockets: `Writer::write` only queues records that the
//! program later writes to its socket, and `Reader::read` hands out plaintext decrypted
//! from records the program read before. So the socket is found from the thread's
//! socket syscalls ([`rustls_sys_enter`], attached only once a rustls object is probed):
//!
//! - a socket is a TLS socket from the first write of a TLS record to it (its first byte
//!   a record type, 20 to 23), and numbered then ([`RUSTLS_CONNECTION`] | time), until
//!   its `close()`, which ends the connection;
//! - what `Reader::read` returns comes from the TLS socket the thread last read from;
//! - what `Writer::write` accepted goes to the TLS socket the thread next writes a
//!   record to, and is copied then, from the caller's buffer, which the blocking
//!   `rustls::Stream` and tokio-rustls keep until their records are written.
//!
//! A program that buffers plaintext on one thread and writes its records on another,
//! or reads records on one thread and plaintext on another, is attributed wrongly or
//! not at all; a read with no TLS socket read before on its thread is counted as a
//! call whose entry was lost.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use llmsim_ebpf_common::{Direction, RUSTLS_CONNECTION, syscall::SOCKET_READS};

use super::{
    hello::first_buffer,
    plain::socket_key,
    syscalls::{syscall_arg, syscall_nr},
    uprobe_pair,
};
use crate::{
    emit::{self, Call},
    filter::is_traced,
};

/// TLS record content types: `change_cipher_spec`, alert, handshake, application data.
const RECORD_TYPES: core::ops::RangeInclusive<u8> = 20..=23;

/// Processes that called a probed rustls function (value unused): the only ones
/// whose socket syscalls [`rustls_sys_enter`] looks at.
#[map]
static RUSTLS_PROCESSES: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16_384, 0);

/// Each thread's last TLS socket read from.
#[map]
static RUSTLS_READ_FDS: LruHashMap<u64, i64> = LruHashMap::with_max_entries(16_384, 0);

/// TLS sockets of traced processes, keyed by `tgid << 32 | fd`: the connection id.
#[map]
static RUSTLS_SOCKETS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// `Writer::write` and `Reader::read` calls in progress, by thread.
#[map]
static RUSTLS_CALLS: LruHashMap<u64, Call> = LruHashMap::with_max_entries(16_384, 0);

/// Plaintext `Writer::write` accepted, by thread, until the thread writes a record.
#[map]
static RUSTLS_PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16_384, 0);

/// Plaintext waiting for its socket.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    buf: u64,
    len: u64,
    start_ns: u64,
}

uprobe_pair! {
    /// `<Writer as io::Write>::write(&mut self, buf: &[u8]) -> io::Result<usize>` entry;
    /// rustls >= 0.20, kernel >= 5.17 (`bpf_loop`).
    uprobe,
    rustls_write,
    rustls_write_multi,
    |ctx: ProbeContext| {
        if is_traced() {
            // SAFETY: `regs` is the probe's own register frame.
            let buf = unsafe { (*ctx.regs).rsi };
            remember(Direction::Write, buf, 0, -1, 0);
        }
        0
    }
}

uprobe_pair! {
    /// `<Reader as io::Read>::read(&mut self, buf: &mut [u8]) -> io::Result<usize>` entry;
    /// rustls >= 0.20. Takes the call's sequence number on the thread's last TLS socket read.
    uprobe,
    rustls_read,
    rustls_read_multi,
    |ctx: ProbeContext| {
        if !is_traced() {
            return 0;
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        // SAFETY: the value is copied.
        let Some(fd) = (unsafe { RUSTLS_READ_FDS.get(&pid_tgid) }).copied() else {
            emit::missing_entry();
            return 0;
        };
        let Some(conn) = connection(pid_tgid, fd) else {
            emit::missing_entry();
            return 0;
        };
        // SAFETY: `regs` is the probe's own register frame.
        let buf = unsafe { (*ctx.regs).rsi };
        let tgid = (pid_tgid >> 32) as u32;
        let seq = emit::begin(tgid, conn, Direction::Read as u32);
        remember(Direction::Read, buf, conn, fd, seq);
        0
    }
}

uprobe_pair! {
    /// Return of both: a read emits what it returned; a write's accepted bytes wait
    /// for the thread's next record write ([`rustls_sys_enter`]).
    uretprobe,
    rustls_return,
    rustls_return_multi,
    |ctx: RetProbeContext| {
        let pid_tgid = bpf_get_current_pid_tgid();
        // SAFETY: the value is copied out before the entry is removed.
        let Some(call) = (unsafe { RUSTLS_CALLS.get(&pid_tgid) }).copied() else {
            if is_traced() {
                emit::missing_entry();
            }
            return 0;
        };
        let _ = RUSTLS_CALLS.remove(&pid_tgid);
        // SAFETY: `regs` is the probe's own register frame.
        let (err, n) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rdx) };
        let moved = if err == 0 { n } else { 0 };
        let tgid = (pid_tgid >> 32) as u32;
        if call.direction == Direction::Write as u32 {
            if moved > 0 {
                let pending = Pending {
                    buf: call.buf,
                    len: moved,
                    start_ns: call.start_ns,
                };
                // Plaintext still waiting (its records were never written on this
                // thread) is lost: counted as a call whose entry was lost.
                // SAFETY: the value is only tested for presence.
                if unsafe { RUSTLS_PENDING.get(&pid_tgid) }.is_some() {
                    emit::missing_entry();
                }
                if RUSTLS_PENDING.insert(&pid_tgid, &pending, 0).is_err() {
                    emit::missing_entry();
                }
            }
            return 0;
        }
        if moved > 0 {
            emit::emit(&call, pid_tgid, moved);
        } else {
            emit::cancel(tgid, &call);
        }
        0
    }
}

/// Entry of a socket I/O syscall (`syscall::SOCKET_IO`): notes TLS sockets, the thread's
/// last one read from, and emits accepted plaintext at the thread's next record write.
#[tracepoint]
pub fn rustls_sys_enter(ctx: TracePointContext) -> u32 {
    let _ = try_sys_enter(&ctx);
    0
}

/// Entry of `close()`: ends a TLS socket's connection.
#[tracepoint]
pub fn rustls_sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some(pid_tgid) = rustls_thread() else {
        return 0;
    };
    let key = socket_key(pid_tgid, syscall_arg(&ctx, 0));
    // SAFETY: the value is copied.
    if let Some(conn) = (unsafe { RUSTLS_SOCKETS.get(&key) }).copied() {
        let _ = RUSTLS_SOCKETS.remove(&key);
        emit::end(conn);
    }
    0
}

/// The current thread's `pid_tgid`, if its process is traced and called rustls.
#[inline(always)]
fn rustls_thread() -> Option<u64> {
    if !is_traced() {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is only tested for presence.
    unsafe { RUSTLS_PROCESSES.get(&((pid_tgid >> 32) as u32)) }.map(|_| pid_tgid)
}

fn try_sys_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(pid_tgid) = rustls_thread() else {
        return Ok(());
    };
    let id = syscall_nr(ctx);
    let fd = syscall_arg(ctx, 0);
    let key = socket_key(pid_tgid, fd);
    if SOCKET_READS.contains(&id) {
        // SAFETY: the value is only tested for presence.
        if unsafe { RUSTLS_SOCKETS.get(&key) }.is_some() {
            let _ = RUSTLS_READ_FDS.insert(&pid_tgid, &(fd.cast_signed()), 0);
        }
        return Ok(());
    }
    let (buf, len) = first_buffer(id, syscall_arg(ctx, 1), syscall_arg(ctx, 2))?;
    // SAFETY: a user pointer read fault-tolerantly.
    if len == 0 || !RECORD_TYPES.contains(&unsafe { bpf_probe_read_user(buf as *const u8) }?) {
        return Ok(());
    }
    let Some(conn) = connection(pid_tgid, fd.cast_signed()).or_else(|| {
        // SAFETY: plain helper call without arguments.
        let conn = RUSTLS_CONNECTION | unsafe { bpf_ktime_get_ns() };
        RUSTLS_SOCKETS.insert(&key, &conn, 0).ok().map(|()| conn)
    }) else {
        return Ok(());
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { RUSTLS_PENDING.get(&pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = RUSTLS_PENDING.remove(&pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a syscall's fd argument is an int in a 64-bit register"
    )]
    let call = Call {
        conn,
        buf: pending.buf,
        start_ns: pending.start_ns,
        seq: emit::begin(tgid, conn, Direction::Write as u32),
        direction: Direction::Write as u32,
        fd: fd as i32,
    };
    emit::emit(&call, pid_tgid, pending.len);
    Ok(())
}

/// The connection id of socket `fd` of the current process, if it carries TLS.
#[inline(always)]
fn connection(pid_tgid: u64, fd: i64) -> Option<u64> {
    // SAFETY: the value is copied.
    unsafe { RUSTLS_SOCKETS.get(&socket_key(pid_tgid, fd.cast_unsigned())) }.copied()
}

/// Remembers a call of the current thread from its entry to its return, and its
/// process as one that uses rustls.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the fd of a TLS socket is an int"
)]
fn remember(direction: Direction, buf: u64, conn: u64, fd: i64, seq: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = RUSTLS_PROCESSES.insert(&((pid_tgid >> 32) as u32), &1, 0);
    let fd = fd as i32;
    let call = Call {
        conn,
        buf,
        // SAFETY: plain helper call without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        seq,
        direction: direction as u32,
        fd,
    };
    // An LRU map evicts instead of refusing; a call it refuses all the same
    // finds no entry at its return, which counts it.
    let _ = RUSTLS_CALLS.insert(&pid_tgid, &call, 0);
}
