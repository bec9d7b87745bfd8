//! Whole-or-nothing file creation that never replaces an existing file. The
//! contents go to an unnamed `O_TMPFILE` file in the same directory, are
//! fsynced, and are linked to the final name (`linkat(2)` fails if the name
//! exists); then the directory is fsynced. A crash at any point leaves no
//! final file or a whole one, and nothing else: an unnamed file vanishes with
//! its process. Filesystems without `O_TMPFILE` get a named temporary file
//! instead (starting with `.`, ending in `.tmp`), which a crash can leave
//! behind for the next writer to remove.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a file could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The final name is taken; nothing was written under it.
    #[error("{path} already exists")]
    Exists {
        /// The final name.
        path: PathBuf,
    },
    /// The temporary file could not be created, written or fsynced.
    #[error("cannot write temporary file {path}")]
    Temp {
        /// The temporary file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The temporary file could not be linked to its final name.
    #[error("cannot create {path}")]
    Link {
        /// The final name.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The directory could not be fsynced, so the new name may not survive a crash.
    #[error("cannot sync directory {path}")]
    SyncDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Whether `name` is one of this module's temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && Path::new(name).extension().is_some_and(|e| e == "tmp")
}

/// Who a created file or directory belongs to, when not to the writing
/// process: under `sudo`, the user who ran it, so a snapshot recorded as
/// root can still be edited, pruned and committed without root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// `SUDO_UID`/`SUDO_GID` when this process runs as root under `sudo` for
    /// another user; `None` otherwise.
    pub fn invoking_user() -> Option<Self> {
        let id = |name| std::env::var(name).ok()?.parse::<u32>().ok();
        let owner = Self {
            uid: id("SUDO_UID")?,
            gid: id("SUDO_GID")?,
        };
        (rustix::process::geteuid().is_root() && owner.uid != 0).then_some(owner)
    }

    /// Gives `file` to this owner.
    fn chown_file(self, file: &File) -> io::Result<()> {
        rustix::fs::fchown(file, Some(self.uid()), Some(self.gid())).map_err(Into::into)
    }

    /// Gives the file or directory at `path` to this owner.
    pub fn chown_path(self, path: &Path) -> io::Result<()> {
        rustix::fs::chown(path, Some(self.uid()), Some(self.gid())).map_err(Into::into)
    }

    fn uid(self) -> rustix::fs::Uid {
        rustix::fs::Uid::from_raw(self.uid)
    }

    fn gid(self) -> rustix::fs::Gid {
        rustix::fs::Gid::from_raw(self.gid)
    }
}

/// Creates `dir/name` holding `contents`, with permission bits `mode` (less
/// the umask) and, when given, `owner`, unless that name already exists.
pub fn create_new(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<PathBuf, PublishError> {
    let path = dir.join(name);
    match create_unnamed(dir, &path, contents, mode, owner) {
        Ok(()) => return sync_dir(dir).map(|()| path),
        Err(Unnamed::Unsupported) => {}
        Err(Unnamed::Failed(error)) => return Err(error),
    }
    let temp = dir.join(format!(
        ".{name}.{}-{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    if let Err(source) = write_synced(&temp, contents, mode, owner) {
        remove_temp(&temp);
        return Err(PublishError::Temp { path: temp, source });
    }
    let linked = fs::hard_link(&temp, &path);
    remove_temp(&temp);
    match linked {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(PublishError::Exists { path });
        }
        Err(source) => return Err(PublishError::Link { path, source }),
        Ok(()) => {}
    }
    sync_dir(dir)?;
    Ok(path)
}

fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PublishError::SyncDir {
            path: dir.to_owned(),
            source,
        })
}

/// Why [`create_unnamed`] did not create the file.
enum Unnamed {
    /// The filesystem has no `O_TMPFILE`: use a named temporary file.
    Unsupported,
    /// A real failure.
    Failed(PublishError),
}

/// Writes `contents` to an unnamed file in `dir` and links it as `path`.
fn create_unnamed(
    dir: &Path,
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), Unnamed> {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    let fd = match rustix::fs::openat(
        CWD,
        dir,
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    ) {
        Ok(fd) => fd,
        Err(e)
            if [
                rustix::io::Errno::OPNOTSUPP,
                rustix::io::Errno::ISDIR,
                rustix::io::Errno::INVAL,
            ]
            .contains(&e) =>
        {
            return Err(Unnamed::Unsupported);
        }
        Err(e) => {
            return Err(Unnamed::Failed(PublishError::Temp {
                path: dir.to_owned(),
                source: e.into(),
            }));
        }
    };
    let mut file = File::from(fd);
    file.write_all(contents)
        .and_then(|()| owner.map_or(Ok(()), |owner| owner.chown_file(&file)))
        .and_then(|()| file.sync_all())
        .map_err(|source| {
            Unnamed::Failed(PublishError::Temp {
                path: dir.to_owned(),
                source,
            })
        })?;
    // Linking an open unnamed file by its /proc path needs no privilege
    // (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
    match rustix::fs::linkat(CWD, proc_path.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Err(Unnamed::Failed(PublishError::Exists {
            path: path.to_owned(),
        })),
        Err(e) => Err(Unnamed::Failed(PublishError::Link {
            path: path.to_owned(),
            source: e.into(),
        })),
    }
}

/// Best effort: the final name (if any) holds its own link, and a temporary
/// file left behind is removed by the next writer that opens the directory.
fn remove_temp(temp: &Path) {
    if let Err(e) = fs::remove_file(temp)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %temp.display(), error = %e, "cannot remove temporary file");
    }
}

fn write_synced(path: &Path, contents: &[u8], mode: u32, owner: Option<Owner>) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    if let Some(owner) = owner {
        owner.chown_file(&file)?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = create_new(dir.path(), "a.json", b"{}\n", 0o600, None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.json"), b"old").unwrap();
        let err = create_new(dir.path(), "a.json", b"new", 0o644, None).unwrap_err();
        assert!(matches!(err, PublishError::Exists { .. }), "{err:?}");
        assert_eq!(fs::read(dir.path().join("a.json")).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = create_new(&gone, "a.json", b"x", 0o644, None).unwrap_err();
        assert!(
            matches!(&err, PublishError::Temp { path, .. } if path.starts_with(&gone)),
            "{err:?}"
        );
    }

    #[test]
    fn temp_names() {
        assert!(is_temp_name(".000001-openai-x.json.12-abcd.tmp"));
        assert!(!is_temp_name("000001-openai-x.json"));
        assert!(!is_temp_name(".gitkeep"));
    }
}
