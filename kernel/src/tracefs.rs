//! tracefs, where the syscall tracepoints the capture probes attach to are numbered.
//! systemd mounts it at boot (`/sys/kernel/tracing`); where nothing did, it is
//! mounted there, as `perf` and `bpftrace` ask their users to.

use std::{io, path::Path};

use thiserror::Error;

/// Where aya looks for tracefs, in its order: its own mount point, then under debugfs.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// tracefs is out of reach, or has no syscall tracepoints.
#[derive(Debug, Error)]
pub enum TracefsError {
    /// Mounting tracefs failed.
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0})")]
    Mount(#[source] io::Error),
    /// No syscall tracepoints.
    #[error(
        "this kernel has no syscall tracepoints ({0}/events/syscalls is missing): use a kernel built with CONFIG_FTRACE_SYSCALLS=y"
    )]
    NoSyscallEvents(&'static str),
}

/// Makes tracefs reachable where aya reads tracepoint ids, mounting it if need be, and
/// checks that it has the syscall tracepoints. Idempotent.
pub fn ensure_syscall_tracepoints() -> Result<(), TracefsError> {
    let found = MOUNT_POINTS
        .into_iter()
        .find(|path| mounted(Path::new(path)));
    if found.is_none() {
        crate::sys::mount_kernel_fs(c"tracefs", Path::new(MOUNT_POINTS[0]))
            .map_err(TracefsError::Mount)?;
    }
    let mount_point = found.unwrap_or(MOUNT_POINTS[0]);
    if Path::new(mount_point).join("events/syscalls").is_dir() {
        Ok(())
    } else {
        Err(TracefsError::NoSyscallEvents(mount_point))
    }
}

/// Whether tracefs is mounted at `path`: aya's test, a directory with something in it
/// (the kernel creates `/sys/kernel/tracing` empty whether or not it is mounted).
fn mounted(path: &Path) -> bool {
    path.read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
}
