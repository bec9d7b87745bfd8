//! The few system calls std does not wrap: the monotonic clock the kernel stamps
//! events with, what a child must do between fork and exec (join the run's
//! cgroup, die with its parent), mounting cgroup2 where none is visible, and
//! registering the ring buffer's fd with tokio.
//! The only `unsafe` in the agent.
#![expect(unsafe_code, reason = "libc calls without safe std equivalents")]

use std::{
    ffi::{CStr, CString, OsString},
    io,
    os::unix::ffi::OsStrExt as _,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::Path,
    process::Command,
};

use llmsim_snapshot::atomic::Owner;
use tokio::io::{Interest, unix::AsyncFd};

/// Mounts the cgroup2 filesystem at `target`.
pub fn mount_cgroup2(target: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let ret = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

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

/// A command for `argv` whose child joins the cgroup whose `cgroup.procs` is
/// given before it execs (so not one instruction of it runs outside), receives
/// SIGKILL if its parent dies, and, under sudo, runs as the invoking user
/// (`SUDO_UID`/`SUDO_GID`, with that user's supplementary groups, `HOME`,
/// `USER` and `LOGNAME`) unless `as_root`. `argv` must not be empty.
///
/// The order between fork and exec matters: the child joins the cgroup while
/// it is still root (the cgroup is root's), then drops its groups, gid and uid,
/// and only then asks for the parent-death signal, because the kernel clears
/// that setting whenever the credentials change. A parent that died before
/// that point is caught by comparing `getppid()` with the parent's pid.
pub fn command_in_cgroup(argv: &[OsString], cgroup_procs: &Path, as_root: bool) -> Command {
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    let user = if as_root { None } else { invoking_user() };
    if let Some(user) = &user {
        for (name, value) in &user.env {
            command.env(name, value);
        }
    }
    let procs = CString::new(cgroup_procs.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure only makes async-signal-safe calls (open, write,
    // close, setgroups, setgid, setuid, prctl, getppid) and does not allocate:
    // everything it needs was prepared above.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" means the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let write_error = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(write_error);
            }
            if let Some(user) = &user
                && (libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0
                    || libc::setgid(user.gid) != 0
                    || libc::setuid(user.uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before the death signal was armed.
                libc::_exit(137);
            }
            Ok(())
        });
    }
    command
}

/// Who a child runs as under sudo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InvokingUser {
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// Supplementary groups (the primary group included).
    groups: Vec<libc::gid_t>,
    /// `HOME`, `USER`, `LOGNAME` from the password database, when it knows the uid.
    env: Vec<(&'static str, OsString)>,
}

/// The user who ran `sudo`: `SUDO_UID` and `SUDO_GID`, plus what the password
/// and group databases say about them. `None` outside sudo or as root.
fn invoking_user() -> Option<InvokingUser> {
    let Owner { uid, gid } = Owner::invoking_user()?;
    let mut user = InvokingUser {
        uid,
        gid,
        groups: vec![gid],
        env: Vec::new(),
    };
    if let Some((name, home)) = passwd_entry(uid) {
        if let Some(groups) = group_list(&name, gid) {
            user.groups = groups;
        }
        let name = OsString::from(std::ffi::OsStr::from_bytes(name.as_bytes()));
        user.env = vec![("HOME", home), ("USER", name.clone()), ("LOGNAME", name)];
    }
    Some(user)
}

/// The login name and home directory of `uid`.
fn passwd_entry(uid: libc::uid_t) -> Option<(CString, OsString)> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings in `entry`
    // point into `buf`, which outlives their use below.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &raw mut entry,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut found,
        )
    };
    if rc != 0 || found.is_null() || entry.pw_name.is_null() || entry.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so both are NUL-terminated strings in `buf`.
    let (name, dir) = unsafe {
        (
            CStr::from_ptr(entry.pw_name).to_owned(),
            CStr::from_ptr(entry.pw_dir),
        )
    };
    let home = OsString::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    Some((name, home))
}

/// The groups `name` belongs to, `gid` included.
fn group_list(name: &CStr, gid: libc::gid_t) -> Option<Vec<libc::gid_t>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..4 {
        let mut count = libc::c_int::try_from(groups.len()).ok()?;
        // SAFETY: `groups` has room for `count` entries; `name` is NUL-terminated.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &raw mut count) };
        let count = usize::try_from(count).ok()?;
        if rc >= 0 {
            groups.truncate(count);
            return Some(groups);
        }
        // Too small: `count` says how many there are.
        groups.resize(count.max(groups.len() * 2), 0);
    }
    None
}

/// A file mapped read-only into memory, unmapped on drop. Pages are read
/// only when touched.
pub struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    /// Maps all of `file` (an empty file maps to an empty slice).
    pub fn new(file: &std::fs::File) -> io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh private read-only mapping of an open fd; the kernel
        // picks the address. The fd may be closed afterwards.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes until drop. (A file
        // truncated meanwhile makes reads past its end fault; the objects
        // inspected are executables and libraries in use, which are not
        // truncated in place.)
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping exactly the mapping made in `new`.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// Sends `signal` to process `pid`. Errors (it exited) are ignored.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) with a positive pid has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
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
