//! Appending exchanges to a snapshot directory. The writer holds an exclusive
//! lock on `exchanges/` for its lifetime, continues numbering after the highest
//! seq already there, and creates each file whole with no-replace semantics.

use std::fmt::Display;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

use super::{EXCHANGES_DIR, StoreError, naming, to_file_text};
use crate::atomic::{self, Mode, Owner, PublishError};
use crate::model::{Direction, Exchange, FORMAT_VERSION};

/// Permission bits of exchange files (less the umask): they are committed.
const FILE_MODE: Mode = Mode::Umasked(0o644);

/// Appends exchanges to one snapshot directory.
#[derive(Debug)]
pub struct SnapshotWriter {
    exchanges_dir: PathBuf,
    next_seq: u64,
    owner: Option<Owner>,
    /// Held for the flock on `exchanges/`, released on drop.
    _lock: File,
}

impl SnapshotWriter {
    /// Opens (creating if needed) `dir` for appending: takes the directory
    /// lock, removes temporary files left by a killed capture, checks that
    /// files can be created, and finds the next seq.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_as(dir, None)
    }

    /// [`SnapshotWriter::open`], with the directories and files it creates
    /// given to `owner` (see [`Owner::invoking_user`]).
    pub fn open_as(dir: &Path, owner: Option<Owner>) -> Result<Self, StoreError> {
        let exchanges_dir = dir.join(EXCHANGES_DIR);
        let missing: Vec<&Path> = exchanges_dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .collect();
        fs::create_dir_all(&exchanges_dir).map_err(|source| StoreError::CreateDir {
            path: exchanges_dir.clone(),
            source,
        })?;
        if let Some(owner) = owner {
            for created in missing {
                owner
                    .chown_path(created)
                    .map_err(|source| StoreError::CreateDir {
                        path: created.to_owned(),
                        source,
                    })?;
            }
        }
        let lock = lock(&exchanges_dir)?;
        let entries = fs::read_dir(&exchanges_dir).map_err(|source| StoreError::ReadDir {
            path: exchanges_dir.clone(),
            source,
        })?;
        let mut highest = 0;
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::ReadDir {
                path: exchanges_dir.clone(),
                source,
            })?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if atomic::is_temp_name(&name) {
                // Safe only because the lock says no other writer is mid-write.
                fs::remove_file(entry.path()).map_err(|source| StoreError::RemoveTemp {
                    path: entry.path(),
                    source,
                })?;
            } else if let Some(seq) = naming::seq_of(&name) {
                highest = highest.max(seq);
            }
        }
        probe_writable(&exchanges_dir, owner)?;
        Ok(Self {
            next_seq: highest.saturating_add(1),
            exchanges_dir,
            owner,
            _lock: lock,
        })
    }

    /// The seq the next [`write`](Self::write) will try first.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Stores `exchange` under the next free seq (its own `seq` and
    /// `format_version` fields are replaced) and returns the file's path.
    pub fn write(&mut self, exchange: &Exchange) -> Result<PathBuf, StoreError> {
        let mut exchange = exchange.clone();
        exchange.format_version = FORMAT_VERSION;
        loop {
            let seq = self.next_seq;
            if seq == u64::MAX {
                return Err(StoreError::SeqExhausted {
                    path: self.exchanges_dir.clone(),
                });
            }
            exchange.seq = seq;
            let text =
                to_file_text(&exchange).map_err(|source| StoreError::Serialize { seq, source })?;
            let origin: &dyn Display = match exchange.direction {
                Direction::Inbound => &"inbound",
                Direction::Outbound => &exchange.provider,
            };
            let name = naming::file_name(
                seq,
                origin,
                &exchange.request.method,
                &exchange.request.path,
            );
            let created = atomic::create_new(
                &self.exchanges_dir,
                &name,
                text.as_bytes(),
                FILE_MODE,
                self.owner,
            );
            self.next_seq = seq + 1;
            match created {
                Ok(path) => return Ok(path),
                // Someone else put a file there (a git pull?): never overwrite.
                Err(PublishError::Exists { .. }) => {}
                Err(source) => return Err(StoreError::Write { seq, source }),
            }
        }
    }
}

/// An exclusive, non-blocking flock on the directory itself, so no lock file
/// is left behind to be committed.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let file = File::open(dir).map_err(|source| StoreError::Lock {
        path: dir.to_owned(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: dir.to_owned(),
        }),
        Err(TryLockError::Error(source)) => Err(StoreError::Lock {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Fails at open rather than at the first exchange, before the traced program
/// has spent money on a request that then cannot be stored.
fn probe_writable(dir: &Path, owner: Option<Owner>) -> Result<(), StoreError> {
    let probe = format!(".probe-{}.tmp", std::process::id());
    let path = atomic::create_new(dir, &probe, b"", FILE_MODE, owner).map_err(|source| {
        StoreError::NotWritable {
            path: dir.to_owned(),
            source,
        }
    })?;
    fs::remove_file(&path).map_err(|source| StoreError::RemoveTemp { path, source })
}
