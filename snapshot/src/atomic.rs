//! Whole-or-nothing file writes, each file with its permission bits ([`Mode`])
//! and owner from its creation, before it has its final name.
//!
//! [`create_new`] never replaces an existing file. The contents go to an
//! unnamed `O_TMPFILE` file in the same directory, are fsynced, and are linked
//! to the final name (`linkat(2)` fails if the name exists); then the
//! directory is fsynced. A crash at any point leaves no final file or a whole
//! one, and nothing else: an unnamed file vanishes with its process.
//! Filesystems without `O_TMPFILE` get a named temporary file instead
//! (starting with `.`, ending in `.tmp`), which a crash can leave behind for
//! the next writer to remove.
//!
//! [`replace`] writes such a named temporary file, fsyncs it and renames it
//! over the final name, then fsyncs the directory: readers see the old
//! contents or the new, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    /// The temporary file could not be renamed over its final name.
    #[error("cannot replace {path}")]
    Rename {
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

/// The permission bits of a new file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// These bits less the process umask, as `open(2)` gives them: the user's
    /// umask decides who else may read the file.
    Umasked(u32),
    /// Exactly these bits whatever the umask, for files other users must be
    /// able to read (a CA certificate, a trust bundle). They are set on the
    /// file before it has its final name.
    Exact(u32),
}

impl Mode {
    /// The bits the file is opened with.
    fn open_bits(self) -> u32 {
        match self {
            Self::Umasked(bits) | Self::Exact(bits) => bits,
        }
    }

    /// Undoes the umask on a file opened with [`Mode::open_bits`], for [`Mode::Exact`].
    fn apply(self, file: &File) -> io::Result<()> {
        match self {
            Self::Umasked(_) => Ok(()),
            Self::Exact(bits) => file.set_permissions(fs::Permissions::from_mode(bits)),
        }
    }
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

/// Creates `dir/name` holding `contents`, with permission bits `mode` and,
/// when given, `owner`, unless that name already exists.
pub fn create_new(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: Mode,
    owner: Option<Owner>,
) -> Result<PathBuf, PublishError> {
    let path = dir.join(name);
    match create_unnamed(dir, &path, contents, mode, owner) {
        Ok(()) => return sync_dir(dir).map(|()| path),
        Err(Unnamed::Unsupported) => {}
        Err(Unnamed::Failed(error)) => return Err(error),
    }
    let temp = write_temp(dir, name, contents, mode, owner)?;
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

/// Writes `dir/name` holding `contents`, with permission bits `mode` and,
/// when given, `owner`, replacing the file that name held, if any.
pub fn replace(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: Mode,
    owner: Option<Owner>,
) -> Result<PathBuf, PublishError> {
    let path = dir.join(name);
    let temp = write_temp(dir, name, contents, mode, owner)?;
    if let Err(source) = fs::rename(&temp, &path) {
        remove_temp(&temp);
        return Err(PublishError::Rename { path, source });
    }
    sync_dir(dir)?;
    Ok(path)
}

/// Writes `contents` to a new named temporary file in `dir` and returns its
/// path; on failure nothing is left behind.
fn write_temp(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: Mode,
    owner: Option<Owner>,
) -> Result<PathBuf, PublishError> {
    let temp = dir.join(format!(
        ".{name}.{}-{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    match write_synced(&temp, contents, mode, owner) {
        Ok(()) => Ok(temp),
        Err(source) => {
            remove_temp(&temp);
            Err(PublishError::Temp { path: temp, source })
        }
    }
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
    mode: Mode,
    owner: Option<Owner>,
) -> Result<(), Unnamed> {
    use rustix::fs::{AtFlags, CWD, Mode as RawMode, OFlags};
    let fd = match rustix::fs::openat(
        CWD,
        dir,
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        RawMode::from_raw_mode(mode.open_bits()),
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
    mode.apply(&file)
        .and_then(|()| file.write_all(contents))
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

fn write_synced(path: &Path, contents: &[u8], mode: Mode, owner: Option<Owner>) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode.open_bits())
        .open(path)?;
    mode.apply(&file)?;
    file.write_all(contents)?;
    if let Some(owner) = owner {
        owner.chown_file(&file)?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = create_new(dir.path(), "a.json", b"{}\n", Mode::Umasked(0o600), None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(names_in(dir.path()), ["a.json"]);
    }

    #[test]
    fn never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.json"), b"old").unwrap();
        let err = create_new(dir.path(), "a.json", b"new", Mode::Umasked(0o644), None).unwrap_err();
        assert!(matches!(err, PublishError::Exists { .. }), "{err:?}");
        assert_eq!(fs::read(dir.path().join("a.json")).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = create_new(&gone, "a.json", b"x", Mode::Umasked(0o644), None).unwrap_err();
        assert!(
            matches!(&err, PublishError::Temp { path, .. } if path.starts_with(&gone)),
            "{err:?}"
        );
    }

    #[test]
    fn replace_swaps_the_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = replace(dir.path(), "b.pem", b"first", Mode::Umasked(0o644), None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let again = replace(dir.path(), "b.pem", b"second", Mode::Umasked(0o644), None).unwrap();
        assert_eq!(again, path);
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(names_in(dir.path()), ["b.pem"]);
    }

    #[test]
    fn exact_modes_ignore_the_umask() {
        // The usual umask (022) would take the group and other write bits.
        let dir = tempfile::tempdir().unwrap();
        let created = create_new(dir.path(), "new", b"x", Mode::Exact(0o666), None).unwrap();
        assert_eq!(mode_of(&created), 0o666);
        let replaced = replace(dir.path(), "swapped", b"x", Mode::Exact(0o666), None).unwrap();
        assert_eq!(mode_of(&replaced), 0o666);
        let private = replace(dir.path(), "private", b"x", Mode::Exact(0o600), None).unwrap();
        assert_eq!(mode_of(&private), 0o600);
    }

    #[test]
    fn temp_names() {
        assert!(is_temp_name(".000001-openai-x.json.12-abcd.tmp"));
        assert!(!is_temp_name("000001-openai-x.json"));
        assert!(!is_temp_name(".gitkeep"));
    }
}
