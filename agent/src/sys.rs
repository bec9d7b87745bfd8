//! The few system calls std does not wrap: the monotonic clock the kernel stamps
//! events with, what a child must do between fork and exec (join the run's
//! cgroup, die with the agent), and registering the ring buffer's fd with tokio.
//! The only `unsafe` in the agent.
#![expect(unsafe_code, reason = "libc calls without safe std equivalents")]

use std::{
    io,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::PathBuf,
    process::Command,
};

use tokio::io::{Interest, unix::AsyncFd};

/// Wraps an fd-owning value for readiness polling.
pub fn poll_readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd, which therefore stays open until the
    // returned AsyncFd (which owns `inner`) deregisters it on drop.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Makes `command`'s child join the cgroup whose `cgroup.procs` is given before
/// it execs (so not one instruction of it runs untraced), and receive SIGKILL
/// if the agent dies.
pub fn join_cgroup_and_die_with_parent(command: &mut Command, cgroup_procs: PathBuf) {
    let procs = std::ffi::CString::new(cgroup_procs.into_os_string().into_encoded_bytes())
        .unwrap_or_default();
    // SAFETY: the closure only makes async-signal-safe calls (open, write, close, prctl).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" means the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = super::monotonic_ns();
        let b = super::monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
