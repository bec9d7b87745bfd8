//! `llmsim-agent verify`: the gate a snapshot passes before it is committed
//! or used in CI. Every exchange file must parse in this build's format
//! version, hold no secret (checked with the same rules capture redacts by,
//! the snapshot's own `[redact]` rules included), be complete, and not
//! duplicate another file. Every problem is reported, not just the first.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use llmsim_snapshot::config::{RedactRules, SnapshotConfig};
use llmsim_snapshot::model::{Body, Exchange, FORMAT_VERSION, Headers};
use llmsim_snapshot::redact::{RedactError, Redactor};
use llmsim_snapshot::store::{self, StoreError};
use serde::Deserialize;
use serde_json::Value;

/// Why a snapshot could not be verified at all (as opposed to the problems
/// verification finds).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The snapshot directory (or its `exchanges/`) could not be listed.
    #[error(transparent)]
    List {
        /// What the store reported, with the directory.
        #[from]
        source: StoreError,
    },
    /// The built-in redaction patterns could not be compiled.
    #[error("cannot set up the secret scanner")]
    Scanner {
        /// What went wrong.
        #[source]
        source: RedactError,
    },
}

/// One problem in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A file could not be read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A file is not valid JSON for an exchange (or `llmsim.toml` is invalid).
    Unparseable {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        reason: String,
    },
    /// A file was written in another format version.
    FormatVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
    },
    /// Something secret-shaped that capture would have redacted.
    Secret {
        /// The file.
        path: PathBuf,
        /// Where: `request header x-api-key`, `response body /choices/0/message/content`.
        location: String,
        /// The first characters of the secret, enough to find it, too few to use it.
        preview: String,
    },
    /// The exchange is flagged incomplete.
    Incomplete {
        /// The file.
        path: PathBuf,
        /// The reason recorded in the file.
        reason: String,
    },
    /// The file holds the same exchange as an earlier one (`seq` aside).
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The earlier file with the same content.
        of: PathBuf,
    },
}

impl Problem {
    /// A short name for the summary line.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreadable { .. } => "unreadable",
            Self::Unparseable { .. } => "unparseable",
            Self::FormatVersion { .. } => "wrong format version",
            Self::Secret { .. } => "secret",
            Self::Incomplete { .. } => "incomplete",
            Self::Duplicate { .. } => "duplicate",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable { path, reason } => {
                write!(f, "{}: cannot read: {reason}", path.display())
            }
            Self::Unparseable { path, reason } => {
                write!(f, "{}: does not parse: {reason}", path.display())
            }
            Self::FormatVersion { path, found } => write!(
                f,
                "{}: format_version {found}, this build reads {FORMAT_VERSION}",
                path.display()
            ),
            Self::Secret {
                path,
                location,
                preview,
            } => write!(
                f,
                "{}: secret in {location}: `{preview}…` is not redacted",
                path.display()
            ),
            Self::Incomplete { path, reason } => {
                write!(f, "{}: incomplete exchange: {reason}", path.display())
            }
            Self::Duplicate { path, of } => {
                write!(f, "{}: duplicate of {}", path.display(), of.display())
            }
        }
    }
}

/// What verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Exchange files looked at.
    pub files: usize,
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
}

impl Verification {
    /// Whether the snapshot passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// `verify: 12 exchange files, 3 problems (2 incomplete, 1 secret)` or
    /// `verify: 12 exchange files, no problems`.
    pub fn summary(&self) -> String {
        let files = format!(
            "{} exchange file{}",
            self.files,
            if self.files == 1 { "" } else { "s" }
        );
        if self.passed() {
            return format!("verify: {files}, no problems");
        }
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for problem in &self.problems {
            match kinds.iter_mut().find(|(k, _)| *k == problem.kind()) {
                Some((_, n)) => *n += 1,
                None => kinds.push((problem.kind(), 1)),
            }
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!(
            "verify: {files}, {} problem{} ({})",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" },
            kinds.join(", ")
        )
    }
}

/// Verifies the snapshot in `dir`.
pub fn verify(dir: &Path) -> Result<Verification, VerifyError> {
    let files = store::exchange_files(dir)?;
    let mut report = Verification::default();
    let config = match SnapshotConfig::load(dir) {
        Ok(config) => config,
        Err(e) => {
            report.problems.push(Problem::Unparseable {
                path: dir.join(llmsim_snapshot::config::CONFIG_FILE),
                reason: llmsim_snapshot::error_chain(&e),
            });
            SnapshotConfig::default()
        }
    };
    // Any key will do: only whether redaction changes something matters.
    let redactor = match Redactor::new(&config.redact, [0; 32]) {
        Ok(r) => r,
        Err(e) => {
            // A bad user pattern: report it and scan with the built-in rules.
            report.problems.push(Problem::Unparseable {
                path: dir.join(llmsim_snapshot::config::CONFIG_FILE),
                reason: llmsim_snapshot::error_chain(&e),
            });
            Redactor::new(&RedactRules::default(), [0; 32])
                .map_err(|source| VerifyError::Scanner { source })?
        }
    };
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        report.files += 1;
        check_file(&path, &redactor, &mut seen, &mut report.problems);
    }
    Ok(report)
}

fn check_file(
    path: &Path,
    redactor: &Redactor,
    seen: &mut HashMap<String, PathBuf>,
    problems: &mut Vec<Problem>,
) {
    #[derive(Deserialize)]
    struct Version {
        format_version: u64,
    }
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            problems.push(Problem::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            });
            return;
        }
    };
    let parsed = serde_json::from_str::<Version>(&text)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            if v.format_version == u64::from(FORMAT_VERSION) {
                serde_json::from_str::<Exchange>(&text)
                    .map_err(|e| e.to_string())
                    .map(Some)
            } else {
                problems.push(Problem::FormatVersion {
                    path: path.to_owned(),
                    found: v.format_version,
                });
                Ok(None)
            }
        });
    let exchange = match parsed {
        Ok(exchange) => exchange,
        Err(reason) => {
            problems.push(Problem::Unparseable {
                path: path.to_owned(),
                reason,
            });
            None
        }
    };
    let mut secrets = Vec::new();
    if let Some(exchange) = &exchange {
        secrets = secrets_in(exchange, redactor);
    }
    if secrets.is_empty() {
        // Anything the structured check cannot see: an unparseable file, or
        // a field outside the messages (host, process, summary).
        secrets = changed_text("file", &text, redactor);
    }
    for (location, preview) in secrets {
        problems.push(Problem::Secret {
            path: path.to_owned(),
            location,
            preview,
        });
    }
    let Some(exchange) = exchange else { return };
    if let Some(reason) = &exchange.incomplete {
        problems.push(Problem::Incomplete {
            path: path.to_owned(),
            reason: reason.clone(),
        });
    }
    if let Some(key) = content_key(&text) {
        match seen.get(&key) {
            Some(first) => problems.push(Problem::Duplicate {
                path: path.to_owned(),
                of: first.clone(),
            }),
            None => {
                seen.insert(key, path.to_owned());
            }
        }
    }
}

/// The file's content with `seq` left out, so a copy under another number
/// is caught. Real captures never collide: timings and `started_at` differ.
fn content_key(text: &str) -> Option<String> {
    let mut value: Value = serde_json::from_str(text).ok()?;
    value.as_object_mut()?.remove("seq");
    Some(value.to_string())
}

/// `(location, preview)` of every value redaction would change.
fn secrets_in(exchange: &Exchange, redactor: &Redactor) -> Vec<(String, String)> {
    let mut clean = exchange.clone();
    redactor.redact_exchange(&mut clean);
    let mut found = Vec::new();
    if let Some(preview) = first_change(&exchange.request.path, &clean.request.path) {
        found.push(("request path".to_owned(), preview));
    }
    for (side, original, redacted) in [
        ("request", &exchange.request.headers, &clean.request.headers),
        (
            "response",
            &exchange.response.headers,
            &clean.response.headers,
        ),
    ] {
        header_changes(side, original, redacted, &mut found);
    }
    body_changes(
        "request body",
        &exchange.request.body,
        &clean.request.body,
        &mut found,
    );
    body_changes(
        "response body",
        &exchange.response.body,
        &clean.response.body,
        &mut found,
    );
    found
}

fn header_changes(
    side: &str,
    original: &Headers,
    redacted: &Headers,
    found: &mut Vec<(String, String)>,
) {
    for ((name, a), (_, b)) in original.iter().zip(redacted.iter()) {
        if let Some(preview) = first_change(a, b) {
            found.push((format!("{side} header {name}"), preview));
        }
    }
}

fn body_changes(what: &str, original: &Body, redacted: &Body, found: &mut Vec<(String, String)>) {
    match (original, redacted) {
        (Body::Json { json: a, .. }, Body::Json { json: b, .. }) => {
            json_changes(what, "", a, b, found);
        }
        (Body::Text { text: a, .. }, Body::Text { text: b, .. }) => {
            if let Some(preview) = first_change(a, b) {
                found.push((what.to_owned(), preview));
            }
        }
        (
            Body::Sse {
                events: a,
                unterminated: ta,
                ..
            },
            Body::Sse {
                events: b,
                unterminated: tb,
                ..
            },
        ) => {
            for (i, (ea, eb)) in a.iter().zip(b).enumerate() {
                let fields = [
                    (Some(&ea.data), Some(&eb.data)),
                    (ea.event.as_ref(), eb.event.as_ref()),
                    (ea.id.as_ref(), eb.id.as_ref()),
                ];
                if let Some(preview) = fields
                    .iter()
                    .find_map(|(x, y)| first_change(x.map_or("", |s| s), y.map_or("", |s| s)))
                {
                    found.push((format!("{what} event {i}"), preview));
                }
            }
            if let Some(preview) =
                first_change(ta.as_deref().unwrap_or(""), tb.as_deref().unwrap_or(""))
            {
                found.push((format!("{what} unterminated tail"), preview));
            }
        }
        (a, b) if a != b => {
            let (x, y) = (a.to_bytes(), b.to_bytes());
            let preview = first_change(&String::from_utf8_lossy(&x), &String::from_utf8_lossy(&y))
                .unwrap_or_default();
            found.push((format!("{what} (binary)"), preview));
        }
        _ => {}
    }
}

fn json_changes(
    what: &str,
    pointer: &str,
    a: &Value,
    b: &Value,
    found: &mut Vec<(String, String)>,
) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, va) in x {
                if let Some(vb) = y.get(key) {
                    let escaped = key.replace('~', "~0").replace('/', "~1");
                    json_changes(what, &format!("{pointer}/{escaped}"), va, vb, found);
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                json_changes(what, &format!("{pointer}/{i}"), va, vb, found);
            }
        }
        (a, b) if a != b => {
            let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let preview = first_change(&text(a), &text(b)).unwrap_or_default();
            let at = if pointer.is_empty() { "/" } else { pointer };
            found.push((format!("{what} {at}"), preview));
        }
        _ => {}
    }
}

/// Redaction applied to arbitrary text, as a last resort.
fn changed_text(what: &str, text: &str, redactor: &Redactor) -> Vec<(String, String)> {
    let mut body = Body::Text {
        content_encoding: None,
        text: text.to_owned(),
    };
    redactor.redact_body(&mut body);
    match body {
        Body::Text { text: clean, .. } => first_change(text, &clean)
            .map(|preview| vec![(what.to_owned(), preview)])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The first four characters where `original` and `redacted` part, or
/// `None` when they are equal.
fn first_change(original: &str, redacted: &str) -> Option<String> {
    if original == redacted {
        return None;
    }
    let at = original
        .char_indices()
        .zip(redacted.chars())
        .find(|((_, a), b)| a != b)
        .map_or_else(|| original.len().min(redacted.len()), |((i, _), _)| i);
    let at = (0..=at)
        .rev()
        .find(|i| original.is_char_boundary(*i))
        .unwrap_or(0);
    Some(original[at..].chars().take(4).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::report::tests::{sample_exchanges, snapshot_dir};

    const OPENAI_KEY: &str = "sk-proj-Abc123def456GHI789jkl012MNO345pqr";
    const GOOGLE_KEY: &str = "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q";

    fn files(dir: &Path) -> Vec<PathBuf> {
        store::exchange_files(dir).unwrap()
    }

    fn edit(path: &Path, f: impl FnOnce(&mut Value)) {
        let mut value: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        f(&mut value);
        fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    }

    #[test]
    fn a_clean_snapshot_passes() {
        let dir = snapshot_dir(&sample_exchanges());
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.problems, []);
        assert_eq!(report.files, 6);
        assert_eq!(report.summary(), "verify: 6 exchange files, no problems");
        let empty = tempfile::tempdir().unwrap();
        assert!(verify(empty.path()).unwrap().passed());
        assert!(matches!(
            verify(&empty.path().join("nope")),
            Err(VerifyError::List {
                source: StoreError::ReadDir { .. }
            })
        ));
    }

    #[test]
    fn planted_keys_are_found_wherever_they_are() {
        let dir = snapshot_dir(&sample_exchanges());
        let f = files(dir.path());
        edit(&f[0], |v| {
            v["request"]["body"]["json"]["messages"] =
                json!([{"role": "user", "content": format!("my key is {OPENAI_KEY}")}]);
        });
        edit(&f[1], |v| {
            v["request"]["headers"] = json!([
                ["x-api-key", "plainsecretvalue"],
                ["authorization", format!("Bearer {OPENAI_KEY}")]
            ]);
        });
        edit(&f[2], |v| {
            v["request"]["path"] = json!(format!("/v1/messages?key={GOOGLE_KEY}"));
            v["response"]["body"]["events"][1]["data"] = json!(format!(
                "{{\"text\":\"xai-{}\"}}",
                "a1B2c3D4e5F6g7H8i9J0k1L2"
            ));
        });
        edit(&f[3], |v| {
            v["process"]["exe"] = json!(format!("/tmp/{OPENAI_KEY}"));
        });
        let report = verify(dir.path()).unwrap();
        let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        let text = lines.join("\n");
        assert!(
            text.contains("request body /messages/0/content: `sk-p…`"),
            "{text}"
        );
        assert!(text.contains("request header x-api-key: `plai…`"), "{text}");
        assert!(text.contains("request header authorization"), "{text}");
        assert!(text.contains("request path"), "{text}");
        assert!(text.contains("response body event 1: `xai-…`"), "{text}");
        assert!(
            text.contains("000004") && text.contains("secret in file"),
            "{text}"
        );
        assert!(
            !text.contains(OPENAI_KEY) && !text.contains(GOOGLE_KEY),
            "never print a secret: {text}"
        );
        assert!(
            report.problems.iter().all(|p| p.kind() == "secret"),
            "{text}"
        );
        assert_eq!(
            report.summary(),
            format!(
                "verify: 6 exchange files, {} problems ({} secret)",
                lines.len(),
                lines.len()
            )
        );
    }

    #[test]
    fn redaction_placeholders_and_prose_pass() {
        let dir = snapshot_dir(&sample_exchanges());
        let f = files(dir.path());
        edit(&f[0], |v| {
            v["request"]["headers"] = json!([
                ["authorization", "Bearer <redacted:3f9a1c07>"],
                ["x-goog-api-key", "<redacted:0123abcd>"]
            ]);
            v["request"]["body"]["json"]["note"] =
                json!("use sk-learn-compatible estimators; key=<redacted:deadbeef>");
        });
        assert_eq!(verify(dir.path()).unwrap().problems, []);
    }

    #[test]
    fn the_snapshots_own_rules_apply() {
        let dir = snapshot_dir(&sample_exchanges());
        fs::write(
            dir.path().join("llmsim.toml"),
            "[redact]\npatterns = ['acct_([0-9]+)']\n",
        )
        .unwrap();
        edit(&files(dir.path())[0], |v| {
            v["request"]["body"]["json"]["user"] = json!("acct_123456");
        });
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0].to_string().contains("/user: `1234…`"),
            "{}",
            report.problems[0]
        );

        fs::write(dir.path().join("llmsim.toml"), "[redact]\nheaderz = []\n").unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(
            report.problems[0]
                .to_string()
                .contains("llmsim.toml: does not parse"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn bad_files_incomplete_exchanges_and_duplicates() {
        let dir = snapshot_dir(&sample_exchanges());
        let f = files(dir.path());
        fs::write(&f[0], "{\"format_version\": 1, \"seq\": ").unwrap();
        edit(&f[1], |v| v["format_version"] = json!(2));
        edit(&f[2], |v| {
            v["incomplete"] = json!("connection closed in the response body");
        });
        let copy = dir
            .path()
            .join("exchanges/000099-openai-post-v1-chat-completions.json");
        let mut copied: Value = serde_json::from_str(&fs::read_to_string(&f[3]).unwrap()).unwrap();
        copied["seq"] = json!(99);
        fs::write(&copy, serde_json::to_string_pretty(&copied).unwrap()).unwrap();
        fs::write(dir.path().join("exchanges/README.md"), "not an exchange").unwrap();
        fs::write(
            dir.path().join("exchanges/.000100-x.json.1-2.tmp"),
            "partial",
        )
        .unwrap();
        let report = verify(dir.path()).unwrap();
        let kinds: Vec<&str> = report.problems.iter().map(Problem::kind).collect();
        assert_eq!(
            kinds,
            [
                "unparseable",
                "wrong format version",
                "incomplete",
                "duplicate"
            ],
            "{:?}",
            report.problems
        );
        assert_eq!(report.files, 7);
        let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        assert!(
            lines[0].contains("does not parse: EOF while parsing"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with("format_version 2, this build reads 1"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("incomplete exchange: connection closed in the response body"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("000099") && lines[3].contains(&f[3].display().to_string()),
            "{}",
            lines[3]
        );
        assert_eq!(
            report.summary(),
            "verify: 7 exchange files, 4 problems (1 unparseable, 1 wrong format version, 1 incomplete, 1 duplicate)"
        );
    }

    #[test]
    fn a_secret_in_an_unparseable_file_is_still_found() {
        let dir = snapshot_dir(&sample_exchanges());
        fs::write(
            &files(dir.path())[0],
            format!("{{\"format_version\": 1, \"key\": \"{OPENAI_KEY}"),
        )
        .unwrap();
        let kinds: Vec<&str> = verify(dir.path())
            .unwrap()
            .problems
            .iter()
            .map(Problem::kind)
            .collect();
        assert_eq!(kinds, ["unparseable", "secret"]);
    }

    #[test]
    fn previews_stop_at_character_boundaries() {
        assert_eq!(first_change("abc", "abc"), None);
        assert_eq!(
            first_change("héllo-sk-1234567", "héllo-<redacted:x>").as_deref(),
            Some("sk-1")
        );
        assert_eq!(first_change("ab", "abc").as_deref(), Some(""));
    }
}
