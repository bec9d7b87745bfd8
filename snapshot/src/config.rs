//! A snapshot's own settings, `llmsim.toml` beside `exchanges/`: extra
//! redaction rules for capture, match rules for replay, the faults replay
//! injects for load tests ([`FaultRules`]), and what a regression replay of the
//! app's own API leaves out of its comparison ([`CompareRules`]). Committed with the recording so
//! every machine redacts, matches and fails alike. Unknown keys are errors: a
//! misspelt redaction rule must not silently leak a secret.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::provider::Provider;
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
    /// A `[[faults.rules]]` entry has no valid trigger.
    #[error("invalid [faults] rule in {path}")]
    Faults {
        /// The config file.
        path: PathBuf,
        /// What is wrong with the rule.
        #[source]
        source: FaultRuleError,
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
    /// `[faults]`: failures replay injects, for load tests of the app's retries.
    pub faults: FaultRules,
    /// `[compare]`: what a regression replay of the inbound requests ignores when it
    /// compares the app's answers with the recorded ones.
    pub compare: CompareRules,
}

/// `[compare]`: the volatile parts of the app's answers, left out when a regression
/// replay compares each answer with the recorded one.
///
/// ```toml
/// [compare]
/// headers = ["x-trace-id"]
/// json_pointers = ["/elapsed_ms", "/calls/*/latency_ms"]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompareRules {
    /// Response header names ignored besides [`CompareRules::DEFAULT_HEADERS`],
    /// case-insensitive.
    pub headers: Vec<String>,
    /// RFC 6901 JSON pointers into JSON response bodies whose values are ignored (the
    /// field may also be missing on either side); a `*` segment stands for any one key
    /// or array index.
    pub json_pointers: Vec<String>,
}

impl CompareRules {
    /// Headers always ignored: they change on every run or only describe the
    /// transfer (the body is compared itself).
    pub const DEFAULT_HEADERS: [&str; 11] = [
        "date",
        "server",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "age",
        "expires",
        "last-modified",
        "etag",
        "x-request-id",
    ];

    /// Whether a response header of this name is left out of the comparison.
    pub fn ignores_header(&self, name: &str) -> bool {
        Self::DEFAULT_HEADERS
            .iter()
            .copied()
            .chain(self.headers.iter().map(String::as_str))
            .any(|ignored| ignored.eq_ignore_ascii_case(name))
    }
}

/// Why a fault rule given on the command line is not one.
#[derive(Debug, thiserror::Error)]
pub enum FaultRuleError {
    /// A fault kind is not one replay knows.
    #[error(
        "unknown fault {value:?}: expected 429, 500, 502, 503, 529, reset, stall, cut, \
         stream-error or slow-first-token"
    )]
    Kind {
        /// The value given.
        value: String,
    },
    /// A `--fault` item is not `key=value`.
    #[error("fault rule item {item:?} is not key=value")]
    Item {
        /// The item given.
        item: String,
    },
    /// The rule does not parse as a `[[faults.rules]]` entry. The reason is in the
    /// message: the command line's parser prints no source.
    #[error("invalid fault rule {rule:?}: {reason}")]
    Parse {
        /// The rule as given.
        rule: String,
        /// What is wrong with it, as the TOML parser says.
        reason: String,
    },
    /// A rule says neither `rate` nor `every`, or both, or a rate outside 0 to 1.
    #[error("fault rule {rule} needs exactly one of rate (0 to 1) or every (1 or more)")]
    Trigger {
        /// The rule as given.
        rule: String,
    },
}

/// `[faults]`: the seed and the rules of fault injection.
///
/// ```toml
/// [faults]
/// seed = 7
/// [[faults.rules]]
/// kind = "429"
/// rate = 0.3
/// provider = "openai"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRules {
    /// Seeds every random decision, so the same request sequence gets the same faults.
    pub seed: u64,
    /// The rules, tried in order; the first that fires decides the request's fault.
    pub rules: Vec<FaultRule>,
}

/// One fault rule: which requests it applies to, how often it fires, and what it does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// What the app gets.
    pub kind: FaultKind,
    /// Fire for this fraction of the matching requests (0 to 1), drawn from the seed.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Fire for every Nth matching request (the Nth, the 2Nth, ...).
    #[serde(default)]
    pub every: Option<u64>,
    /// Only requests to this provider.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// Only requests to this path (query string left out), e.g. `/v1/chat/completions`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Only requests for this model.
    #[serde(default)]
    pub model: Option<String>,
    /// `cut` and `stream-error`: how many events go out first.
    #[serde(default)]
    pub after_events: usize,
    /// `slow-first-token`: milliseconds added before the first byte; `429`: the
    /// `retry-after` given when the recording has none (default 1000).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

impl FaultRule {
    /// Checks the trigger: exactly one of `rate` (0 to 1) and `every` (1 or more).
    pub fn validate(&self, rule: &str) -> Result<(), FaultRuleError> {
        match (self.rate, self.every) {
            (Some(rate), None) if (0.0..=1.0).contains(&rate) => Ok(()),
            (None, Some(every)) if every >= 1 => Ok(()),
            _ => Err(FaultRuleError::Trigger {
                rule: rule.to_owned(),
            }),
        }
    }
}

impl FromStr for FaultRule {
    type Err = FaultRuleError;

    /// The command line's spelling of a `[[faults.rules]]` entry: comma-separated
    /// `key=value` items with the same keys, e.g. `kind=429,rate=0.3,provider=openai`.
    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let mut table = toml::Table::new();
        for item in rule.split(',').filter(|i| !i.trim().is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| FaultRuleError::Item {
                item: item.to_owned(),
            })?;
            let value = value.trim();
            let value = value
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| value.parse::<f64>().map(toml::Value::Float))
                .unwrap_or_else(|_| toml::Value::String(value.to_owned()));
            // `kind=429` is a number on the command line and a string in the file.
            let value = match (key.trim(), value) {
                ("kind" | "endpoint" | "model" | "provider", toml::Value::Integer(n)) => {
                    toml::Value::String(n.to_string())
                }
                (_, value) => value,
            };
            table.insert(key.trim().to_owned(), value);
        }
        let parsed: Self =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e| FaultRuleError::Parse {
                    rule: rule.to_owned(),
                    reason: e.message().trim().to_owned(),
                })?;
        parsed.validate(&format!("{rule:?}"))?;
        Ok(parsed)
    }
}

/// What an injected fault does to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FaultKind {
    /// HTTP 429 with the provider's rate-limit headers and body.
    RateLimited,
    /// HTTP 500, provider-shaped.
    InternalError,
    /// HTTP 502, provider-shaped.
    BadGateway,
    /// HTTP 503, provider-shaped.
    Unavailable,
    /// HTTP 529, Anthropic's `overloaded_error` (other providers get the same status).
    Overloaded,
    /// The connection is closed before any response.
    Reset,
    /// The response head, then nothing.
    Stall,
    /// The stream is cut (the connection closed mid-body) after `after_events` events.
    Cut,
    /// An in-stream error event after `after_events` events, then the stream ends.
    StreamError,
    /// The first byte (and everything after it) `delay_ms` later.
    SlowFirstToken,
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 10] = [
        Self::RateLimited,
        Self::InternalError,
        Self::BadGateway,
        Self::Unavailable,
        Self::Overloaded,
        Self::Reset,
        Self::Stall,
        Self::Cut,
        Self::StreamError,
        Self::SlowFirstToken,
    ];

    /// The name used in `llmsim.toml`, on the command line, in the report and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "429",
            Self::InternalError => "500",
            Self::BadGateway => "502",
            Self::Unavailable => "503",
            Self::Overloaded => "529",
            Self::Reset => "reset",
            Self::Stall => "stall",
            Self::Cut => "cut",
            Self::StreamError => "stream-error",
            Self::SlowFirstToken => "slow-first-token",
        }
    }

    /// The HTTP status of a fault answered with an error response.
    pub fn status(self) -> Option<u16> {
        match self {
            Self::RateLimited => Some(429),
            Self::InternalError => Some(500),
            Self::BadGateway => Some(502),
            Self::Unavailable => Some(503),
            Self::Overloaded => Some(529),
            Self::Reset | Self::Stall | Self::Cut | Self::StreamError | Self::SlowFirstToken => {
                None
            }
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = FaultRuleError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == value)
            .ok_or_else(|| FaultRuleError::Kind {
                value: value.to_owned(),
            })
    }
}

impl TryFrom<String> for FaultKind {
    type Error = FaultRuleError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<FaultKind> for String {
    fn from(kind: FaultKind) -> Self {
        kind.as_str().to_owned()
    }
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
        let config: Self =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?;
        for (n, rule) in config.faults.rules.iter().enumerate() {
            rule.validate(&format!("number {} (kind {})", n + 1, rule.kind))
                .map_err(|source| ConfigError::Faults {
                    path: dir.join(CONFIG_FILE),
                    source,
                })?;
        }
        Ok(config)
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
    fn fault_rules_are_read_from_the_file_and_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[faults]\nseed = 7\n[[faults.rules]]\nkind = \"429\"\nrate = 0.3\n\
             provider = \"openai\"\n[[faults.rules]]\nkind = \"cut\"\nevery = 4\n\
             after_events = 2\n",
        )
        .unwrap();
        let config = SnapshotConfig::load(dir.path()).unwrap();
        assert_eq!(config.faults.seed, 7);
        let flag: FaultRule = "kind=429,rate=0.3,provider=openai".parse().unwrap();
        assert_eq!(config.faults.rules[0], flag);
        assert_eq!(config.faults.rules[1].kind, FaultKind::Cut);
        assert_eq!(config.faults.rules[1].every, Some(4));
        assert_eq!(config.faults.rules[1].after_events, 2);
        for kind in FaultKind::ALL {
            assert_eq!(kind.as_str().parse::<FaultKind>().unwrap(), kind);
        }
        for bad in [
            "kind=418,rate=0.1",
            "kind=429",
            "kind=429,rate=2",
            "kind=429,rate=0.1,every=2",
            "kind=429,every=0",
            "kind=429,rate",
            "kind=429,rate=0.1,colour=red",
        ] {
            assert!(bad.parse::<FaultRule>().is_err(), "{bad}");
        }
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[[faults.rules]]\nkind = \"503\"\n",
        )
        .unwrap();
        let err = SnapshotConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Faults { .. }), "{err}");
    }

    #[test]
    fn compare_rules_add_to_the_default_headers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[compare]\nheaders = [\"X-Trace-Id\"]\njson_pointers = [\"/elapsed_ms\"]\n",
        )
        .unwrap();
        let rules = SnapshotConfig::load(dir.path()).unwrap().compare;
        assert_eq!(rules.json_pointers, vec!["/elapsed_ms".to_owned()]);
        for ignored in ["Date", "server", "x-trace-id"] {
            assert!(rules.ignores_header(ignored), "{ignored}");
        }
        assert!(!rules.ignores_header("content-type"));
        assert!(!CompareRules::default().ignores_header("x-trace-id"));
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[compare]\nheader = [\"x\"]\n",
        )
        .unwrap();
        assert!(matches!(
            SnapshotConfig::load(dir.path()),
            Err(ConfigError::Parse { .. })
        ));
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
