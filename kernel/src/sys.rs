//! Starting a command inside a cgroup, and the system calls that takes which std
//! does not wrap: what the child does between fork and exec (join the cgroup,
//! drop to the invoking user, die with its parent), and mounting cgroup2 or tracefs
//! where none is visible. Also the exit code a shell reports for the child, and a
//! blocking wait for a readable fd (the probes' log ring), and the limit on open files a
//! server of thousands of connections needs.
//! The only `unsafe` in this crate.
#![expect(unsafe_code, reason = "libc calls without safe std equivalents")]

use std::{
    ffi::{CStr, CString, OsString},
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd},
        unix::{
            ffi::OsStrExt as _,
            process::{CommandExt as _, ExitStatusExt as _},
        },
    },
    path::Path,
    process::{Command, ExitStatus},
    sync::OnceLock,
};

use llmsim_snapshot::atomic::Owner;

/// Mounts the kernel filesystem `fstype` (`cgroup2`, `tracefs`) at `target`.
pub fn mount_kernel_fs(fstype: &CStr, target: &Path) -> io::Result<()> {
    let target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let ret = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
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

/// The limit on open files this process started with, once [`raise_open_file_limit`] has
/// raised it.
static STARTING_FILE_LIMIT: OnceLock<libc::rlimit> = OnceLock::new();

/// Raises this process's soft limit on open files to its hard limit and returns the new
/// soft limit, as Go's runtime and nginx's `worker_rlimit_nofile` do: the common default of
/// 1,024 would turn a load test away at about a thousand connections. Commands started
/// with [`command_in_cgroup`] get the starting limit back, so an app under replay runs
/// with the limits it would have had.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let limit = open_file_limit()?;
    let starting = *STARTING_FILE_LIMIT.get_or_init(|| limit);
    set_open_file_limit(&libc::rlimit {
        rlim_cur: starting.rlim_max,
        rlim_max: starting.rlim_max,
    })?;
    Ok(starting.rlim_max)
}

/// This process's limit on open files, soft and hard.
fn open_file_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

fn set_open_file_limit(limit: &libc::rlimit) -> io::Result<()> {
    // SAFETY: `limit` is a valid rlimit to read.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A command for `argv` whose child joins the cgroup whose `cgroup.procs` is
/// given before it execs (so not one instruction of it runs outside), receives
/// SIGKILL if its parent dies, and, under sudo, runs as the invoking user
/// (`SUDO_UID`/`SUDO_GID`, with that user's supplementary groups, `HOME`,
/// `USER` and `LOGNAME`) unless `as_root`, with the limit on open files this process
/// started with ([`raise_open_file_limit`]). `argv` must not be empty.
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
    let file_limit = STARTING_FILE_LIMIT.get().copied();
    // SAFETY: the closure only makes async-signal-safe calls (open, write,
    // close, setgroups, setgid, setuid, prctl, getppid, setrlimit) and does not
    // allocate: everything it needs was prepared above.
    unsafe {
        command.pre_exec(move || {
            // Lowering a soft limit is always allowed.
            if let Some(limit) = &file_limit
                && libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0
            {
                return Err(io::Error::last_os_error());
            }
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

/// Blocks until `fd` is readable (a signal interrupting the wait counts as
/// readable: the caller just looks again).
pub fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ret = unsafe { libc::poll(&raw mut poll, 1, -1) };
    if ret >= 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::Interrupted {
        Ok(())
    } else {
        Err(error)
    }
}

/// The child's exit code as a shell reports it: its own code, or 128 plus the
/// signal that killed it. Both fit in a byte (an exit code is the low 8 bits
/// of what the child passed to `exit`; signals go up to 64).
pub fn exit_code(status: ExitStatus) -> u8 {
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    u8::try_from(code).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::process::ExitStatusExt as _, process::ExitStatus};

    #[test]
    fn exit_codes_read_as_a_shell_reports_them() {
        // A wait status: the exit code in bits 8..16, a terminating signal in 0..7.
        assert_eq!(super::exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(super::exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(super::exit_code(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(super::exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(super::exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }

    #[test]
    fn a_raised_file_limit_is_the_hard_one_and_a_command_gets_the_starting_one_back() {
        // Start from a soft limit below the hard one, as a login session's 1,024 is.
        let mut limit = super::open_file_limit().unwrap();
        limit.rlim_cur = limit.rlim_max.min(512);
        super::set_open_file_limit(&limit).unwrap();
        let raised = super::raise_open_file_limit().unwrap();
        assert_eq!(raised, limit.rlim_max);
        assert_eq!(super::open_file_limit().unwrap().rlim_cur, limit.rlim_max);

        // The "cgroup.procs" the child joins is a plain file here: it only takes the write.
        let procs = tempfile::NamedTempFile::new().unwrap();
        let argv = ["sh", "-c", "ulimit -Sn"].map(std::ffi::OsString::from);
        let output = super::command_in_cgroup(&argv, procs.path(), true)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let child: u64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        assert_eq!(child, limit.rlim_cur);
    }
}
