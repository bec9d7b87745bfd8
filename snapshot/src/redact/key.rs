//! The per-machine redaction key: 32 random bytes, hex in
//! `$XDG_DATA_HOME/llmsim/redaction.key` (or `~/.local/share/llmsim/`), mode
//! 0600. It keys the placeholder hash, so the same secret always gets the same
//! placeholder on one machine but placeholders cannot be brute-forced from a
//! committed snapshot without it.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::RedactError;
use crate::atomic::{self, Mode, PublishError};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "redaction.key";

/// Loads `data_dir/redaction.key`, creating the directory (0700) and a fresh
/// random key (0600) on first use. Concurrent first uses agree on one key.
pub fn redaction_key(data_dir: &Path) -> Result<[u8; 32], RedactError> {
    let path = data_dir.join(KEY_FILE);
    match read_key(&path) {
        Err(RedactError::ReadKey { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| RedactError::CreateDataDir {
            path: data_dir.to_owned(),
            source,
        })?;
    let key: [u8; 32] = rand::random();
    let text = format!("{}\n", hex::encode(key));
    match atomic::create_new(
        data_dir,
        KEY_FILE,
        text.as_bytes(),
        Mode::Umasked(0o600),
        None,
    ) {
        Ok(_) => Ok(key),
        // Another process created it first: use theirs.
        Err(PublishError::Exists { .. }) => read_key(&path),
        Err(source) => Err(RedactError::WriteKey { source }),
    }
}

fn read_key(path: &Path) -> Result<[u8; 32], RedactError> {
    let text = fs::read_to_string(path).map_err(|source| RedactError::ReadKey {
        path: path.to_owned(),
        source,
    })?;
    let mut key = [0; 32];
    hex::decode_to_slice(text.trim(), &mut key).map_err(|source| RedactError::BadKey {
        path: path.to_owned(),
        source,
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("llmsim");
        let key = redaction_key(&data_dir).unwrap();
        assert_eq!(redaction_key(&data_dir).unwrap(), key);
        let mode = fs::metadata(data_dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            redaction_key(other.path()).unwrap(),
            key,
            "keys are random per machine"
        );
    }

    #[test]
    fn a_damaged_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "abcd\n").unwrap();
        let err = redaction_key(dir.path()).unwrap_err();
        assert!(matches!(err, RedactError::BadKey { .. }), "{err:?}");
        assert!(err.to_string().contains(KEY_FILE));
    }
}
