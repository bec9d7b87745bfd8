//! A snapshot's own settings, `llmsim.toml` beside `exchanges/`: extra
//! redaction rules for capture and match rules for replay. Committed with the
//! recording so every machine redacts and matches alike. Unknown keys are
//! errors: a misspelt redaction rule must not silently leak a secret.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::signature::MatchRules;

/// The file name inside a snapshot directory.
pub const CONFIG_FILE: &str = "llmsim.toml";

/// Why `llmsim.toml` could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML for [`SnapshotConfig`].
    #[error("cannot parse {path}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What is wrong and where (line and column).
        #[source]
        source: toml::de::Error,
    },
}

/// The contents of `llmsim.toml`. Every section is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// `[redact]`: what to redact beyond the built-in rules.
    pub redact: RedactRules,
    /// `[match]`: how replay decides that a request matches a recording.
    #[serde(rename = "match")]
    pub matching: MatchRules,
}

/// `[redact]`: redaction rules added to the built-in ones (which always apply).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactRules {
    /// Extra header names whose values are replaced, case-insensitive.
    pub headers: Vec<String>,
    /// Extra query parameter names whose values are replaced (`key` always is).
    pub query_params: Vec<String>,
    /// RFC 6901 JSON pointers (`/metadata/user_id`) replaced in JSON bodies.
    pub json_pointers: Vec<String>,
    /// Extra regular expressions (Rust `regex` syntax) scrubbed from paths,
    /// header values and bodies; with a capture group, only group 1 is replaced.
    pub patterns: Vec<String>,
}

impl SnapshotConfig {
    /// Reads `dir/llmsim.toml`; a missing file gives the defaults.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = SnapshotConfig::load(dir.path()).unwrap();
        assert_eq!(config.redact, RedactRules::default());
    }

    #[test]
    fn sections_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[redact]\nheaders = [\"x-team\"]\nquery_params = [\"sig\"]\n\
             json_pointers = [\"/user\"]\npatterns = ['tok_[a-z0-9]+']\n\n[match]\n",
        )
        .unwrap();
        let config = SnapshotConfig::load(dir.path()).unwrap();
        assert_eq!(
            config.redact,
            RedactRules {
                headers: vec!["x-team".into()],
                query_params: vec!["sig".into()],
                json_pointers: vec!["/user".into()],
                patterns: vec!["tok_[a-z0-9]+".into()],
            }
        );
    }

    #[test]
    fn malformed_file_names_file_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "[redact]\nheader = [\"x\"]\n").unwrap();
        let err = SnapshotConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains(CONFIG_FILE), "{err}");
        let reason = err.source().unwrap().to_string();
        assert!(
            reason.contains("header") && reason.contains("line 2"),
            "{reason}"
        );
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(CONFIG_FILE)).unwrap();
        assert!(matches!(
            SnapshotConfig::load(dir.path()),
            Err(ConfigError::Read { .. })
        ));
    }
}
