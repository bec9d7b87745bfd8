//! Cgroup v2 directories that tests and benchmarks create for the processes
//! they start, as a CI runner's job cgroup would be.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// How long [`TestCgroup`]'s drop waits for its killed processes to go.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);

static CGROUPS: AtomicU32 = AtomicU32::new(0);

/// Where cgroup2 is mounted in this mount namespace.
///
/// # Panics
/// When no cgroup2 filesystem is mounted.
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    llmsim_kernel::cgroup::mount_from_mountinfo(&mountinfo).expect("a cgroup2 mount")
}

/// A fresh cgroup v2 directory; its processes are killed and it is removed on drop.
pub struct TestCgroup {
    path: PathBuf,
    relative: PathBuf,
}

impl TestCgroup {
    /// Creates `llmsim-test-PID-N` under the cgroup2 mount.
    ///
    /// # Panics
    /// When the directory cannot be created (no privilege, no cgroup2).
    #[must_use]
    pub fn new() -> TestCgroup {
        let relative = PathBuf::from(format!(
            "llmsim-test-{}-{}",
            std::process::id(),
            CGROUPS.fetch_add(1, Ordering::Relaxed)
        ));
        let path = cgroup2_mount().join(&relative);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        TestCgroup { path, relative }
    }

    /// A child cgroup `name` of this one (drop it first).
    ///
    /// # Panics
    /// When the directory cannot be created.
    #[must_use]
    pub fn child(&self, name: &str) -> TestCgroup {
        let relative = self.relative.join(name);
        let path = self.path.join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        TestCgroup { path, relative }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path relative to the cgroup2 mount, as a user would give it to `--cgroup`.
    #[must_use]
    pub fn relative(&self) -> &Path {
        &self.relative
    }

    /// A command whose process first moves itself into this cgroup, then execs `argv`.
    #[must_use]
    pub fn command(&self, argv: &[OsString]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .args(argv);
        cmd
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        while self.path.exists() && std::fs::remove_dir(&self.path).is_err() {
            if Instant::now() > deadline {
                eprintln!("warning: cannot remove cgroup {}", self.path.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
