//! A tmpfs of a chosen size mounted on a fresh directory, for faults of the filesystem under
//! a snapshot: a disk that fills up, a mount made read-only while a capture runs.

use std::{path::Path, process::Command};

/// A tmpfs mounted on a temporary directory; unmounted (lazily, so a process still in it does
/// not keep it) and removed on drop. Needs root.
pub struct TestTmpfs {
    dir: tempfile::TempDir,
}

impl TestTmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `1m`, `64k`).
    ///
    /// # Panics
    /// When the directory cannot be created or the mount fails.
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "llmsim-test"],
            dir.path(),
        );
        Self { dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts the filesystem read-only.
    ///
    /// # Panics
    /// When the remount fails.
    pub fn make_read_only(&self) {
        mount(&["-o", "remount,ro"], self.path());
    }
}

fn mount(args: &[&str], dir: &Path) {
    let status = Command::new("mount")
        .args(args)
        .arg(dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run mount {args:?}: {e}"));
    assert!(
        status.success(),
        "mount {args:?} {}: {status}",
        dir.display()
    );
}

impl Drop for TestTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}
