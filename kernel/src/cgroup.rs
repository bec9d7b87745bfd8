//! cgroup v2: finds its mount from /proc/self/mountinfo (never hard-coded; this
//! machine's is at /sys/fs/cgroup/unified in a hybrid layout), creates the
//! per-run child cgroup, and names a cgroup by the id the kernel reports.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Child,
};

use thiserror::Error;

/// cgroup v2 failures.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error(
        "no cgroup v2 mount found in /proc/self/mountinfo and none could be mounted: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    /// The path is not in the cgroup v2 hierarchy (a cgroup v1 directory?).
    #[error("{} is not a cgroup v2 directory: the cgroup2 hierarchy is mounted at {}", path.display(), mount.display())]
    NotCgroup2 {
        /// The path given.
        path: PathBuf,
        /// The cgroup2 mount.
        mount: PathBuf,
    },
    /// A cgroup directory or file could not be used.
    #[error("cgroup {}: {action} failed", path.display())]
    Io {
        /// The cgroup path.
        path: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Where the cgroup2 hierarchy is mounted when no mount is visible, as inside
/// `ip netns exec`, which gives the command a fresh /sys without it.
const OWN_MOUNT: &str = "/run/llmsim/cgroup2";

/// The cgroup2 mount point. When none is visible, the hierarchy is mounted at
/// `/run/llmsim/cgroup2` (the one cgroup2 tree; this needs `CAP_SYS_ADMIN`).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NoCgroup2)?;
    if let Some(mount) = mount_from_mountinfo(&info) {
        return Ok(mount);
    }
    let own = PathBuf::from(OWN_MOUNT);
    std::fs::create_dir_all(&own).map_err(|_| CgroupError::NoCgroup2)?;
    crate::sys::mount_kernel_fs(c"cgroup2", &own).map_err(|_| CgroupError::NoCgroup2)?;
    Ok(own)
}

/// The mount point of the first cgroup2 filesystem in `info`, the text of a
/// /proc/PID/mountinfo.
pub fn mount_from_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype == "cgroup2" {
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        } else {
            None
        }
    })
}

/// A cgroup v2 directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// Whether dropping this value removes the directory.
    owned: bool,
    /// See [`Cgroup::kill_on_exit`]; its stdin is the pipe whose end it waits for.
    watchdog: Option<Child>,
}

/// The watchdog of [`Cgroup::kill_on_exit`]: `$1` is the cgroup directory.
/// It ignores the terminal's signals (Ctrl-C reaches the whole foreground
/// process group), waits for end of input, then kills and removes the cgroup,
/// retrying the removal while the killed tasks exit.
const WATCHDOG_SCRIPT: &str = r#"trap '' INT TERM HUP QUIT
while read -r _; do :; done
{ echo 1 > "$1/cgroup.kill"; } 2>/dev/null
i=0
while [ -d "$1" ] && ! rmdir "$1" 2>/dev/null && [ "$i" -lt 200 ]; do
    sleep 0.05
    i=$((i + 1))
done
"#;

impl Cgroup {
    /// An existing cgroup, given as a path under the mount or absolute. A
    /// directory of a cgroup v1 hierarchy (which has a `cgroup.procs` too) is
    /// refused: its processes could never match a cgroup v2 id.
    pub fn existing(path: &Path) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount()?;
        let full = if path.is_absolute() && path.exists() {
            path.to_path_buf()
        } else {
            mount.join(path.strip_prefix("/").unwrap_or(path))
        };
        std::fs::metadata(full.join("cgroup.procs")).map_err(|source| CgroupError::Io {
            path: full.clone(),
            action: "opening cgroup.procs",
            source,
        })?;
        let canonical = full.canonicalize().map_err(|source| CgroupError::Io {
            path: full.clone(),
            action: "resolving",
            source,
        })?;
        if !canonical.starts_with(&mount) {
            return Err(CgroupError::NotCgroup2 { path: full, mount });
        }
        Ok(Self {
            path: full,
            owned: false,
            watchdog: None,
        })
    }

    /// Creates `llmsim-<tag>-<pid>` under the mount; removed on drop.
    pub fn create(tag: &str) -> Result<Self, CgroupError> {
        let path = cgroup2_mount()?.join(format!("llmsim-{tag}-{}", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| CgroupError::Io {
            path: path.clone(),
            action: "creating",
            source,
        })?;
        Ok(Self {
            path,
            owned: true,
            watchdog: None,
        })
    }

    /// Makes sure nothing outlives this process in the cgroup, even when this
    /// process is killed with SIGKILL and no destructor runs: starts a small
    /// `sh` outside the cgroup that waits for the end of its stdin (the kernel
    /// closes the pipe whatever way this process ends), then kills everything
    /// in the cgroup and removes it. `PR_SET_PDEATHSIG` reaches only the
    /// direct child; this reaches its whole process tree. Dropping the cgroup
    /// stops the watchdog.
    pub fn kill_on_exit(&mut self) -> Result<(), CgroupError> {
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("llmsim-cgroup-watchdog")
            .arg(&self.path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|source| CgroupError::Io {
                path: self.path.clone(),
                action: "starting the watchdog (/bin/sh) for",
                source,
            })?;
        self.watchdog = Some(child);
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id `bpf_get_current_cgroup_id()` reports: the directory's inode.
    pub fn id(&self) -> Result<u64, CgroupError> {
        std::fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(|source| CgroupError::Io {
                path: self.path.clone(),
                action: "stat",
                source,
            })
    }

    /// Pids currently in the cgroup and in its child cgroups, at any depth.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            // A child vanishing meanwhile is simply not listed.
            if let Ok(entries) = std::fs::read_dir(&dir) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        pids
    }

    /// Kills every process left in the cgroup (cgroup.kill, kernel >= 5.14).
    pub fn kill_all(&self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned {
            self.kill_all();
            // The kernel refuses rmdir while dying tasks remain; retry briefly.
            for _ in 0..100 {
                if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            // Not needed any more: this process cleaned up itself.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        let info = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            mount_from_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_means_none() {
        assert_eq!(
            mount_from_mountinfo("30 23 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs ro\n"),
            None
        );
    }
}
