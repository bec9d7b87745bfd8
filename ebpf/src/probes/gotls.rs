//! Uprobes on Go's `crypto/tls`, in Go executables (statically linked: the
//! probes go into the executable itself). Go 1.17 and later pass arguments in
//! registers (the register ABI: `rax`, `rbx`, `rcx`, ... on amd64) and keep
//! the current goroutine `g` in `r14`; every probe here relies on that.
//!
//! Go moves goroutine stacks, so a return probe (which rewrites the return
//! address on the stack) corrupts Go programs. Instead, userspace (the agent's
//! `placement` module) attaches [`go_tls_read_copy`] to the `call
//! runtime.memmove` that copies `(*Conn).Read`'s result, and
//! [`go_tls_read_return`] to the `ret` instructions that do not follow it (or,
//! when there is no such call, to every `ret`), found by disassembly; calls are
//! keyed by goroutine (a goroutine may resume on another thread), not by thread. As
//! for every data source, a call takes its sequence number at entry and its
//! plaintext goes through the one emit path (`crate::emit`).
//!
//! The entry probes sit on the `jbe` of the function's stack-bound check
//! (`cmp 0x10(%r14),%rsp; jbe morestack`), which the kernel emulates. When the
//! stack must grow, that `jbe` is taken, the runtime grows the stack and
//! re-enters the function from its start: the probes skip the taken branch
//! (carry or zero flag set) and see the call once, on its second pass.
//!
//! The connection is the `*tls.Conn`. Its socket fd is read through the
//! `net.Conn` it wraps, with the layouts of Go 1.17 to 1.22 (unchanged since
//! Go 1.9): `tls.Conn.conn` is the first field, an interface (itab, data);
//! for a TCP connection the data is a `*net.TCPConn`, whose first word is its
//! `*net.netFD`, whose `pfd poll.FD` starts with a 16-byte `fdMutex` followed
//! by `Sysfd int`. A value outside the fd range (another `net.Conn` type) is
//! no fd.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use llmsim_ebpf_common::Direction;

use super::uprobe_pair;
use crate::{
    emit::{self, Call},
    filter::is_traced,
    maps::write_over,
};

/// Offset of the `net.Conn` interface's data word in `tls.Conn`.
const CONN_DATA_OFFSET: u64 = 8;
/// Offset of `poll.FD.Sysfd` in `net.netFD` (after `fdMutex`'s 16 bytes).
const SYSFD_OFFSET: u64 = 16;
/// Fds at or above this are taken for a misread (another `net.Conn` type).
const MAX_FD: i64 = 1 << 20;
/// Carry and zero flags: `jbe` is taken when either is set.
const JBE_TAKEN_FLAGS: u64 = 0x1 | 0x40;

/// A goroutine of a process.
#[repr(C)]
#[derive(Clone, Copy)]
struct GoroutineKey {
    tgid: u32,
    pad: u32,
    /// The goroutine's `g` pointer (`r14`).
    g: u64,
}

/// A goroutine's slot in [`GO_TLS_READS`]: its last `(*Conn).Read` call, and
/// whether that call still waits for its result. The slot stays when the call
/// ends and the goroutine's next call is written over it.
#[repr(C)]
#[derive(Clone, Copy)]
struct ReadSlot {
    call: Call,
    /// Nonzero from the call's entry until its result is read.
    waiting: u64,
}

/// Each goroutine's `(*Conn).Read` calls, from the entry probe to the probe
/// that reads the result. LRU: a goroutine that ends leaves its slot behind.
#[map]
static GO_TLS_READS: LruHashMap<GoroutineKey, ReadSlot> = LruHashMap::with_max_entries(16_384, 0);

uprobe_pair! {
    /// `func (c *Conn) Write(b []byte) (int, error)` (`c` in `rax`, `b` in
    /// `rbx`/`rcx`), at its stack check's `jbe`; Go >= 1.17, kernel >= 5.17
    /// (`bpf_loop`). Emits the `len(b)` bytes about to be written.
    uprobe,
    go_tls_write,
    go_tls_write_multi,
    |ctx: ProbeContext| {
        let Some(call) = entry(&ctx, Direction::Write) else {
            return 0;
        };
        let pid_tgid = bpf_get_current_pid_tgid();
        // SAFETY: `regs` is the probe's own register frame.
        let len = unsafe { (*ctx.regs).rcx };
        if len > 0 {
            emit::emit(&call, pid_tgid, len);
        } else {
            emit::cancel((pid_tgid >> 32) as u32, &call);
        }
        0
    }
}

uprobe_pair! {
    /// `func (c *Conn) Read(b []byte) (int, error)`, at its stack check's `jbe`;
    /// Go >= 1.17. Remembers the call for [`go_tls_read_return`].
    uprobe,
    go_tls_read,
    go_tls_read_multi,
    |ctx: ProbeContext| {
        let Some(call) = entry(&ctx, Direction::Read) else {
            return 0;
        };
        let key = goroutine(&ctx);
        let slot = ReadSlot { call, waiting: 1 };
        write_over(&GO_TLS_READS, &key, GO_TLS_READS.get_ptr_mut(&key), &slot);
        0
    }
}

uprobe_pair! {
    /// A `ret` instruction of `(*Conn).Read`: `n` is in `rax`; emits the first
    /// `n` bytes of the buffer the call was given.
    uprobe,
    go_tls_read_return,
    go_tls_read_return_multi,
    |ctx: ProbeContext| {
        let Some(slot) = waiting_read(&goroutine(&ctx)) else {
            return 0;
        };
        // SAFETY: the goroutine's own slot; `regs` is the probe's own register frame.
        let call = unsafe {
            (*slot).waiting = 0;
            (*slot).call
        };
        read_result(&call, unsafe { (*ctx.regs).rax });
        0
    }
}

uprobe_pair! {
    /// The `call runtime.memmove` in `(*Conn).Read` that copies its result
    /// into `b` (`copy(b, ...)` of the inlined `bytes.(*Reader).Read`):
    /// `func memmove(to, from unsafe.Pointer, n uintptr)`, register ABI (`to`
    /// in `rax`, `from` in `rbx`, `n` in `rcx`); Go >= 1.17. The probe runs
    /// before the copy, so the `n` bytes are read at `from`, once `to` is
    /// found to be the buffer the call was given; a copy to elsewhere leaves
    /// the call's entry, and the call shows as lost.
    uprobe,
    go_tls_read_copy,
    go_tls_read_copy_multi,
    |ctx: ProbeContext| {
        let Some(slot) = waiting_read(&goroutine(&ctx)) else {
            return 0;
        };
        // SAFETY: the goroutine's own slot; `regs` is the probe's own register frame.
        let (mut call, (to, from, n)) =
            unsafe { ((*slot).call, ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).rcx)) };
        if to != call.buf {
            return 0;
        }
        // SAFETY: as above.
        unsafe { (*slot).waiting = 0 };
        call.buf = from;
        read_result(&call, n);
        0
    }
}

/// The slot of goroutine `key` while its `(*Conn).Read` call waits for its
/// result; None (counted as a missing entry when the process is traced) when
/// no call waits.
#[inline(always)]
fn waiting_read(key: &GoroutineKey) -> Option<*mut ReadSlot> {
    // SAFETY: a live value of the goroutine's own slot.
    let slot = GO_TLS_READS
        .get_ptr_mut(key)
        .filter(|&slot| unsafe { (*slot).waiting } != 0);
    if slot.is_none() && is_traced() {
        emit::missing_entry();
    }
    slot
}

/// Emits the `n` bytes a read moved (`n` as Go's `int`), or gives the call's
/// sequence number back when it moved none.
#[inline(always)]
fn read_result(call: &Call, n: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if n.cast_signed() > 0 {
        emit::emit(call, pid_tgid, n);
    } else {
        emit::cancel((pid_tgid >> 32) as u32, call);
    }
}

uprobe_pair! {
    /// `func (c *Conn) Close() error`, at its stack check's `jbe`: ends the
    /// connection, as `SSL_free` does, so a later `*Conn` at the same address
    /// starts afresh.
    uprobe,
    go_tls_close,
    go_tls_close_multi,
    |ctx: ProbeContext| {
        if !is_traced() || to_morestack(&ctx) {
            return 0;
        }
        // SAFETY: `regs` is the probe's own register frame.
        emit::end(unsafe { (*ctx.regs).rax });
        0
    }
}

/// The call an entry probe sees, with its sequence number, or None when the
/// process is not traced or the stack check branches to `morestack` (the
/// call starts again after it).
#[inline(always)]
fn entry(ctx: &ProbeContext, direction: Direction) -> Option<Call> {
    if !is_traced() || to_morestack(ctx) {
        return None;
    }
    // SAFETY: `regs` is the probe's own register frame.
    let (conn, buf) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    Some(Call {
        conn,
        buf,
        // SAFETY: plain helper call without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        seq: emit::begin(tgid, conn, direction as u32),
        direction: direction as u32,
        fd: socket_fd(conn),
    })
}

/// Whether the probed `jbe` is about to be taken.
#[inline(always)]
fn to_morestack(ctx: &ProbeContext) -> bool {
    // SAFETY: `regs` is the probe's own register frame.
    let flags = unsafe { (*ctx.regs).eflags };
    flags & JBE_TAKEN_FLAGS != 0
}

/// The current goroutine of the current process.
#[inline(always)]
fn goroutine(ctx: &ProbeContext) -> GoroutineKey {
    GoroutineKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        pad: 0,
        // SAFETY: `regs` is the probe's own register frame.
        g: unsafe { (*ctx.regs).r14 },
    }
}

/// The socket fd of a `*tls.Conn` over a `*net.TCPConn`, or -1.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the fd is checked to be below MAX_FD first"
)]
fn socket_fd(conn: u64) -> i32 {
    // SAFETY: user pointers read with the fault-tolerant helper.
    let fd = unsafe {
        bpf_probe_read_user((conn + CONN_DATA_OFFSET) as *const u64)
            .and_then(|tcp| bpf_probe_read_user(tcp as *const u64))
            .and_then(|net_fd| bpf_probe_read_user((net_fd + SYSFD_OFFSET) as *const i64))
    };
    match fd {
        Ok(fd) if (0..MAX_FD).contains(&fd) => fd as i32,
        _ => -1,
    }
}
