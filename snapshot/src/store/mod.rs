//! The snapshot directory on disk: `DIR/llmsim.toml` (optional) and
//! `DIR/exchanges/`, one pretty-printed JSON file per exchange, named so that
//! they sort in capture order. This module owns reading the directory back
//! ([`load`], or one exchange at a time through [`SnapshotDir`]) and, in
//! [`SnapshotWriter`], appending to it without ever replacing or half-writing
//! a file.

mod naming;
mod render;
mod writer;

use rayon::prelude::*;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::atomic::PublishError;
use crate::config::{ConfigError, SnapshotConfig};
use crate::model::{Exchange, FORMAT_VERSION};

pub use naming::seq_of;
pub use writer::SnapshotWriter;

/// The subdirectory holding the exchange files.
pub const EXCHANGES_DIR: &str = "exchanges";

/// Why a snapshot directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The snapshot directory (or its `exchanges/`) could not be created.
    #[error("cannot create snapshot directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A directory could not be listed (it is missing, not a directory, or
    /// not readable).
    #[error("cannot read snapshot directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The `exchanges/` directory does not accept new files.
    #[error("snapshot directory {path} is not writable")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// Why the probe file could not be created.
        #[source]
        source: PublishError,
    },
    /// Another capture holds the directory's lock.
    #[error("another capture is writing to {path}")]
    Locked {
        /// The locked directory.
        path: PathBuf,
    },
    /// Taking the directory's lock failed for another reason.
    #[error("cannot lock {path}")]
    Lock {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A temporary file left by an earlier, killed capture could not be removed.
    #[error("cannot remove stale temporary file {path}")]
    RemoveTemp {
        /// The temporary file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An exchange could not be turned into a file that would load back (for
    /// example a timing that is not a finite number).
    #[error("exchange {seq} cannot be stored")]
    Serialize {
        /// The seq it would have been stored under.
        seq: u64,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },
    /// Every seq up to `u64::MAX` is taken.
    #[error("no sequence numbers left in {path}")]
    SeqExhausted {
        /// The `exchanges/` directory.
        path: PathBuf,
    },
    /// An exchange file could not be created.
    #[error("cannot write exchange {seq}")]
    Write {
        /// The seq being written.
        seq: u64,
        /// Which step failed, with its path.
        #[source]
        source: PublishError,
    },
    /// An exchange file could not be read.
    #[error("cannot read {path}")]
    ReadFile {
        /// The exchange file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An exchange file is not a valid exchange.
    #[error("cannot parse {path}")]
    Parse {
        /// The exchange file.
        path: PathBuf,
        /// What is wrong, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// An exchange file was written in another format version.
    #[error("{path} has format_version {found}, this build reads {expected}")]
    FormatVersion {
        /// The exchange file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// [`FORMAT_VERSION`].
        expected: u32,
    },
    /// `llmsim.toml` could not be loaded.
    #[error("cannot load the snapshot's configuration")]
    Config {
        /// What went wrong.
        #[source]
        source: ConfigError,
    },
}

/// A snapshot directory as loaded.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Its `llmsim.toml`, or the defaults.
    pub config: SnapshotConfig,
    /// Every exchange, in file name (capture) order.
    pub exchanges: Vec<Recorded>,
}

/// One exchange file.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The file it came from (`DIR/exchanges/000001-openai-….json`).
    pub path: PathBuf,
    /// Its contents.
    pub exchange: Exchange,
}

/// Reads a snapshot directory: its config and every exchange, in name order.
/// A directory without `exchanges/` is an empty snapshot; a missing directory
/// is an error.
pub fn load(dir: &Path) -> Result<Snapshot, StoreError> {
    let snapshot = SnapshotDir::open(dir)?;
    let exchanges = snapshot.load_each(|recorded| recorded)?;
    Ok(Snapshot {
        dir: snapshot.dir,
        config: snapshot.config,
        exchanges,
    })
}

/// A snapshot directory with its config read and its exchange files listed,
/// not yet read. [`SnapshotDir::load_each`] hands each exchange to the caller
/// as soon as it is parsed, so a reader that keeps only part of each (replay)
/// never holds the whole snapshot at once.
#[derive(Debug)]
pub struct SnapshotDir {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Its `llmsim.toml`, or the defaults.
    pub config: SnapshotConfig,
    /// `exchanges/`, open, so that each file is opened relative to it rather
    /// than by walking its whole path again; `None` when there is none.
    exchanges: Option<fs::File>,
    /// The exchange files' names, in capture order. Their paths are made on the
    /// loading threads, which keeps start-up's serial part short.
    names: Vec<String>,
}

impl SnapshotDir {
    /// Reads the config and lists the exchange files. A directory without
    /// `exchanges/` is an empty snapshot; a missing directory is an error.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        check_dir(dir)?;
        let config = SnapshotConfig::load(dir).map_err(|source| StoreError::Config { source })?;
        let exchanges_dir = dir.join(EXCHANGES_DIR);
        let names = exchange_names(&exchanges_dir)?;
        let exchanges = match names {
            Some(_) => {
                Some(
                    fs::File::open(&exchanges_dir).map_err(|source| StoreError::ReadDir {
                        path: exchanges_dir.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Ok(Self {
            dir: dir.to_owned(),
            config,
            exchanges,
            names: names.unwrap_or_default(),
        })
    }

    /// Reads and parses every exchange file and returns what `each` makes of
    /// them, in capture order. A file that cannot be read or parsed is the
    /// error; with several, the first in capture order.
    pub fn load_each<T, F>(&self, each: F) -> Result<Vec<T>, StoreError>
    where
        T: Send,
        F: Fn(Recorded) -> T + Sync,
    {
        let Some(dir) = &self.exchanges else {
            return Ok(Vec::new());
        };
        // Parsing dominates start-up on large snapshots: spread it over the
        // cores. Each task reads into one buffer, reused from file to file.
        let exchanges_dir = self.dir.join(EXCHANGES_DIR);
        let loaded: Vec<Result<T, StoreError>> = self
            .names
            .par_iter()
            .map_init(Vec::new, |buf, name| {
                load_exchange(dir, exchanges_dir.join(name), buf).map(&each)
            })
            .collect();
        loaded.into_iter().collect()
    }
}

/// The exchange files of the snapshot in `dir`, in capture order, listed as
/// [`load`] and [`SnapshotDir`] list them but not read: for tools that look at
/// each file themselves. A directory without `exchanges/` has none; a missing
/// directory is an error.
pub fn exchange_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    check_dir(dir)?;
    let exchanges_dir = dir.join(EXCHANGES_DIR);
    let names = exchange_names(&exchanges_dir)?.unwrap_or_default();
    Ok(names.iter().map(|name| exchanges_dir.join(name)).collect())
}

/// Fails unless `dir` can be listed.
fn check_dir(dir: &Path) -> Result<(), StoreError> {
    fs::read_dir(dir).map_err(|source| StoreError::ReadDir {
        path: dir.to_owned(),
        source,
    })?;
    Ok(())
}

/// Names of the exchange files in `exchanges_dir`, in capture order, or `None`
/// when there is no such directory.
fn exchange_names(exchanges_dir: &Path) -> Result<Option<Vec<String>>, StoreError> {
    let read_dir_error = |source| StoreError::ReadDir {
        path: exchanges_dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(exchanges_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_dir_error(source)),
    };
    // Capture order even past six digits, then name. The key is computed once
    // per name: in the comparison it would dominate on large snapshots.
    let mut names: Vec<(Option<u64>, String)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_dir_error)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && naming::is_exchange_file(&name) {
            names.push((naming::seq_of(&name), name));
        }
    }
    names.sort_unstable();
    Ok(Some(names.into_iter().map(|(_, name)| name).collect()))
}

fn load_exchange(dir: &fs::File, path: PathBuf, buf: &mut Vec<u8>) -> Result<Recorded, StoreError> {
    let read_error = |path, source| StoreError::ReadFile { path, source };
    buf.clear();
    let file = match read_file(dir, &path, buf) {
        Ok(file) => file,
        Err(source) => return Err(read_error(path, source)),
    };
    let mut parsed = serde_json::from_slice::<Exchange>(buf);
    if parsed.is_err() {
        // A filesystem may have ended that one read early: parse again with the rest, if
        // there is more, before saying the file is broken.
        match read_rest(&file, buf) {
            Ok(0) => {}
            Ok(_) => parsed = serde_json::from_slice::<Exchange>(buf),
            Err(source) => return Err(read_error(path, source)),
        }
    }
    match parsed {
        Ok(exchange) if exchange.format_version == FORMAT_VERSION => {
            Ok(Recorded { path, exchange })
        }
        Ok(exchange) => Err(StoreError::FormatVersion {
            path,
            found: exchange.format_version,
            expected: FORMAT_VERSION,
        }),
        Err(source) => Err(parse_error(path, buf, source)),
    }
}

/// Room the first read of an exchange file gets: more than almost any file needs.
const FIRST_READ: usize = 64 * 1024;

/// Appends the bytes of `path`, a file in `dir`, to `buf` and returns the file, still
/// open. It is opened relative to `dir` and read with as few system calls as can be, as
/// they are a good part of loading 100k small files: no `fstat` for its size (`fs::read`
/// makes one), and one `read` for a file that fits in [`FIRST_READ`], as a read of a
/// regular file that comes back short has reached the end on local filesystems, so the
/// read that would confirm it is skipped. [`load_exchange`] reads the rest before it
/// calls a file broken, for filesystems where that does not hold.
fn read_file(dir: &fs::File, path: &Path, buf: &mut Vec<u8>) -> io::Result<fs::File> {
    use rustix::fs::{Mode, OFlags};
    let name = path.file_name().unwrap_or(path.as_os_str());
    let file = fs::File::from(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    buf.reserve(FIRST_READ);
    let room = buf.capacity() - buf.len();
    let n = rustix::io::read(&file, rustix::buffer::spare_capacity(buf))?;
    if n == room {
        read_rest(&file, buf)?;
    }
    Ok(file)
}

/// Appends whatever is left of `file` to `buf`; returns how many bytes that was.
fn read_rest(file: &fs::File, buf: &mut Vec<u8>) -> io::Result<usize> {
    // `Take` keeps `File`'s own `read_to_end`, which asks for the size, out.
    file.take(u64::MAX).read_to_end(buf)
}

/// Why a file did not parse. Its version is then read on its own, so a file
/// from another version says so rather than failing on whichever field
/// changed; files that parse never pay for that second pass.
fn parse_error(path: PathBuf, bytes: &[u8], source: serde_json::Error) -> StoreError {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    match serde_json::from_slice::<Version>(bytes) {
        Ok(v) if v.format_version != FORMAT_VERSION => StoreError::FormatVersion {
            path,
            found: v.format_version,
            expected: FORMAT_VERSION,
        },
        Ok(_) => StoreError::Parse { path, source },
        Err(source) => StoreError::Parse { path, source },
    }
}

/// Serializes `exchange` as its file text; used by the writer, and by tests to
/// compare bytes.
fn to_file_text(exchange: &Exchange) -> Result<String, serde_json::Error> {
    let text = render::render(&serde_json::to_value(exchange)?);
    // A value serde_json writes but cannot read back (NaN becomes null) would
    // make the whole snapshot unloadable: refuse it here instead.
    serde_json::from_str::<Exchange>(&text)?;
    Ok(text)
}

#[cfg(test)]
mod tests;
