//! cgroup v2: finds its mount from /proc/self/mountinfo (never hard-coded; this
//! machine's is at /sys/fs/cgroup/unified in a hybrid layout), creates the
//! per-run child cgroup, and names a cgroup by the id the kernel reports.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// cgroup v2 failures.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error(
        "no cgroup v2 mount found in /proc/self/mountinfo: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
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

/// The cgroup2 mount point.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NoCgroup2)?;
    mount_from_mountinfo(&info).ok_or(CgroupError::NoCgroup2)
}

fn mount_from_mountinfo(info: &str) -> Option<PathBuf> {
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
}

impl Cgroup {
    /// An existing cgroup, given as a path under the mount or absolute.
    pub fn existing(path: &Path) -> Result<Self, CgroupError> {
        let full = if path.is_absolute() && path.exists() {
            path.to_path_buf()
        } else {
            cgroup2_mount()?.join(path.strip_prefix("/").unwrap_or(path))
        };
        std::fs::metadata(full.join("cgroup.procs")).map_err(|source| CgroupError::Io {
            path: full.clone(),
            action: "opening cgroup.procs",
            source,
        })?;
        Ok(Self {
            path: full,
            owned: false,
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
        Ok(Self { path, owned: true })
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

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
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
