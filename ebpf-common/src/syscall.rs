//! The `x86_64` syscalls the capture probes follow: their numbers, which the kernel
//! programs dispatch on, and their names, which name the tracepoints
//! (`syscalls/sys_enter_NAME`, `syscalls/sys_exit_NAME`) the agent attaches those
//! programs to. One table, so that a program never waits for a syscall no tracepoint
//! brings it.
//!
//! Only these syscalls run a program: the kernel's syscall tracepoints test a
//! per-syscall bit before doing anything, where a raw `sys_enter` tracepoint would run
//! the program on every syscall of every process on the machine.
//!
//! A program may read no further into the record than the shortest record of the
//! tracepoints it is attached to (the kernel refuses the attach with `EACCES`): hence
//! the sets below, by the arguments read. The socket calls' programs read three,
//! `close()`'s one, the first calls' only the number.

pub const READ: u64 = 0;
pub const WRITE: u64 = 1;
pub const CLOSE: u64 = 3;
pub const READV: u64 = 19;
pub const WRITEV: u64 = 20;
pub const CONNECT: u64 = 42;
pub const ACCEPT: u64 = 43;
pub const SENDTO: u64 = 44;
pub const RECVFROM: u64 = 45;
pub const SENDMSG: u64 = 46;
pub const RECVMSG: u64 = 47;
pub const BIND: u64 = 49;
pub const EXECVE: u64 = 59;
pub const GETTID: u64 = 186;
pub const SET_TID_ADDRESS: u64 = 218;
pub const SET_ROBUST_LIST: u64 = 273;
pub const ACCEPT4: u64 = 288;
pub const EXECVEAT: u64 = 322;
pub const RSEQ: u64 = 334;

/// The calls a TLS library makes on its socket: reads (read, readv, recvfrom, recvmsg).
pub const SOCKET_READS: [u64; 4] = [READ, READV, RECVFROM, RECVMSG];
/// And writes (write, writev, sendto, sendmsg).
pub const SOCKET_WRITES: [u64; 4] = [WRITE, WRITEV, SENDTO, SENDMSG];
/// Both.
pub const SOCKET_IO: [u64; 8] = [
    READ, WRITE, READV, WRITEV, SENDTO, RECVFROM, SENDMSG, RECVMSG,
];

/// Followed at entry for the whole capture: socket I/O (an `SSL_*` call's fd, the
/// `ClientHello` of a connection, plain HTTP), connect destinations, and binds and
/// accepts on app ports. Each has three arguments or more.
pub const SOCKET_CALLS: [u64; 12] = [
    READ, WRITE, READV, WRITEV, SENDTO, RECVFROM, SENDMSG, RECVMSG, CONNECT, BIND, ACCEPT, ACCEPT4,
];

/// Followed at exit, for a result: socket I/O byte counts (plain HTTP) and accepted sockets.
pub const EXITS: [u64; 10] = [
    READ, WRITE, READV, WRITEV, SENDTO, RECVFROM, SENDMSG, RECVMSG, ACCEPT, ACCEPT4,
];

/// Followed at entry while new processes are held: a new task's first syscall, where a new
/// process is stopped before `fork()` returns in it. glibc's child makes
/// `set_robust_list` first, musl's `set_tid_address`; a glibc thread `rseq` or
/// `set_robust_list`, a Go thread `gettid`; a `vfork` child execs. A task that makes none
/// of these first is held at its first socket call or `close()` instead, before that
/// call runs.
pub const FIRST_CALLS: [u64; 6] = [
    SET_ROBUST_LIST,
    SET_TID_ADDRESS,
    RSEQ,
    GETTID,
    EXECVE,
    EXECVEAT,
];

/// The name of syscall `nr`, as its tracepoints spell it; empty for one not followed.
pub const fn name(nr: u64) -> &'static str {
    match nr {
        READ => "read",
        WRITE => "write",
        CLOSE => "close",
        READV => "readv",
        WRITEV => "writev",
        CONNECT => "connect",
        ACCEPT => "accept",
        SENDTO => "sendto",
        RECVFROM => "recvfrom",
        SENDMSG => "sendmsg",
        RECVMSG => "recvmsg",
        BIND => "bind",
        EXECVE => "execve",
        GETTID => "gettid",
        SET_TID_ADDRESS => "set_tid_address",
        SET_ROBUST_LIST => "set_robust_list",
        ACCEPT4 => "accept4",
        EXECVEAT => "execveat",
        RSEQ => "rseq",
        _ => "",
    }
}

/// Offsets in the record a syscall tracepoint passes its program (`struct
/// trace_event_raw_sys_enter` / `_sys_exit`, the same on every kernel since 4.x): the
/// syscall number (an `int`), then the six arguments at entry, or the result at exit.
pub const TRACEPOINT_NR_OFFSET: usize = 8;
/// See [`TRACEPOINT_NR_OFFSET`].
pub const TRACEPOINT_ARGS_OFFSET: usize = 16;

/// Whether every syscall in `calls` has a name.
const fn all_named(calls: &[u64]) -> bool {
    let mut i = 0;
    while i < calls.len() {
        if name(calls[i]).is_empty() {
            return false;
        }
        i += 1;
    }
    true
}
// Every followed syscall has tracepoints to attach to.
const _: () = assert!(
    all_named(&SOCKET_CALLS) && all_named(&[CLOSE]) && all_named(&EXITS) && all_named(&FIRST_CALLS)
);
