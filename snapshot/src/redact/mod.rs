//! Redaction, applied to every exchange before anything reaches disk. Secret
//! header values, secret query parameters, configured JSON pointers, and
//! provider-key-shaped text anywhere become `<redacted:HASH8>`, where HASH8 is
//! the first 8 hex digits of HMAC-SHA256(per-machine key, secret): different
//! keys stay distinguishable in a recording, and none can be recovered.

mod key;
mod patterns;

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::atomic::PublishError;
use crate::config::RedactRules;
use crate::model::{Body, Exchange, Headers};
use patterns::Pattern;

pub use key::{KEY_FILE, redaction_key};

/// Whether `value` is a placeholder, `<redacted:HASH8>`, as a whole.
pub fn is_placeholder(value: &str) -> bool {
    value
        .strip_prefix("<redacted:")
        .and_then(|s| s.strip_suffix('>'))
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `text` holds a placeholder anywhere (a secret header keeps its
/// `Authorization` scheme before one; scrubbed text has them inside).
pub fn contains_placeholder(text: &str) -> bool {
    text.match_indices("<redacted:")
        .any(|(at, _)| text.get(at..at + 19).is_some_and(is_placeholder))
}

/// Header names whose values are always secret (compared lowercase).
pub const SECRET_HEADERS: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
];

/// A header whose name contains one of these is secret too, except rate-limit
/// headers (`x-ratelimit-remaining-tokens`), which hold counters replay needs.
const SECRET_WORDS: [&str; 3] = ["token", "secret", "key"];

/// Query parameters whose values are always secret (Gemini's `?key=`).
const SECRET_QUERY_PARAMS: [&str; 1] = ["key"];

/// Why a redactor or the redaction key could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// A pattern (built-in or from `[redact] patterns`) is not a valid regex.
    #[error("invalid redaction pattern {pattern:?}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// What the regex parser said.
        #[source]
        source: regex::Error,
    },
    /// A `[redact] json_pointers` entry is not an RFC 6901 pointer.
    #[error("invalid JSON pointer {pointer:?}: it must be empty or start with '/'")]
    JsonPointer {
        /// The pointer as written.
        pointer: String,
    },
    /// Neither `XDG_DATA_HOME` nor `HOME` names an absolute directory.
    #[error("cannot find a data directory for the redaction key: set XDG_DATA_HOME or HOME")]
    NoDataDir,
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    CreateDataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The key file could not be read.
    #[error("cannot read redaction key {path}")]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The key file does not hold 64 hex digits.
    #[error("{path} is not a redaction key (64 hex digits)")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What the hex decoder said.
        #[source]
        source: hex::FromHexError,
    },
    /// A new key file could not be written.
    #[error("cannot create the redaction key")]
    WriteKey {
        /// Which step failed, with its path.
        #[source]
        source: PublishError,
    },
}

/// Redacts exchanges with built-in rules plus a snapshot's `[redact]` rules.
pub struct Redactor {
    mac: Hmac<Sha256>,
    headers: Vec<String>,
    query_params: Vec<String>,
    json_pointers: Vec<String>,
    patterns: Vec<Pattern>,
}

impl fmt::Debug for Redactor {
    // Hand-written so the key never appears in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("headers", &self.headers)
            .field("query_params", &self.query_params)
            .field("json_pointers", &self.json_pointers)
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor keyed by `key` (see [`redaction_key`]).
    pub fn new(rules: &RedactRules, key: [u8; 32]) -> Result<Self, RedactError> {
        if let Some(pointer) = rules
            .json_pointers
            .iter()
            .find(|p| !p.is_empty() && !p.starts_with('/'))
        {
            return Err(RedactError::JsonPointer {
                pointer: pointer.clone(),
            });
        }
        let mut patterns = Pattern::builtin()
            .map_err(|(pattern, source)| RedactError::Pattern { pattern, source })?;
        for pattern in &rules.patterns {
            patterns.push(
                Pattern::user(pattern).map_err(|source| RedactError::Pattern {
                    pattern: pattern.clone(),
                    source,
                })?,
            );
        }
        // HMAC zero-pads keys shorter than its 64-byte block (RFC 2104), so
        // this is HMAC-SHA256 with the 32-byte key, built without a fallible call.
        let mut block = [0; 64];
        block[..32].copy_from_slice(&key);
        let lower = |names: &[String]| names.iter().map(|n| n.to_ascii_lowercase()).collect();
        Ok(Self {
            mac: Hmac::new(&block.into()),
            headers: lower(&rules.headers),
            query_params: lower(&rules.query_params),
            json_pointers: rules.json_pointers.clone(),
            patterns,
        })
    }

    /// `<redacted:HASH8>` for `secret`.
    pub fn placeholder(&self, secret: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        format!("<redacted:{}>", hex::encode(&digest[..4]))
    }

    /// Redacts everything in `exchange`: the request path's query, headers of
    /// both messages, and both bodies.
    pub fn redact_exchange(&self, exchange: &mut Exchange) {
        exchange.request.path = self.redact_path(&exchange.request.path);
        self.redact_headers(&mut exchange.request.headers);
        self.redact_headers(&mut exchange.response.headers);
        self.redact_headers(&mut exchange.response.trailers);
        self.redact_body(&mut exchange.request.body);
        self.redact_body(&mut exchange.response.body);
    }

    /// Whether a header's value is secret as a whole.
    pub fn is_secret_header(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        SECRET_HEADERS.contains(&name.as_str())
            || self.headers.contains(&name)
            || (!name.contains("ratelimit") && SECRET_WORDS.iter().any(|w| name.contains(w)))
    }

    /// Replaces secret header values (keeping an `Authorization` scheme) and
    /// scrubs key-shaped text from the others.
    pub fn redact_headers(&self, headers: &mut Headers) {
        for (name, value) in &mut headers.0 {
            if value.is_empty() {
                continue;
            }
            if self.is_secret_header(name) {
                *value = self.secret_header_value(name, value);
            } else if let Some(scrubbed) = self.scrub_text(value) {
                *value = scrubbed;
            }
        }
    }

    fn secret_header_value(&self, name: &str, value: &str) -> String {
        let keeps_scheme = name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("proxy-authorization");
        if keeps_scheme
            && let Some((scheme, credentials)) = value.trim().split_once([' ', '\t'])
            && !credentials.trim().is_empty()
        {
            return format!("{scheme} {}", self.replace(credentials.trim()));
        }
        self.replace(value)
    }

    /// The placeholder for a whole secret value; a value that already is a
    /// placeholder stays as it is, so redacting twice changes nothing.
    fn replace(&self, secret: &str) -> String {
        if is_placeholder(secret) {
            secret.to_owned()
        } else {
            self.placeholder(secret.as_bytes())
        }
    }

    /// Replaces secret query parameter values and scrubs key-shaped text.
    pub fn redact_path(&self, path: &str) -> String {
        let redacted = match path.split_once('?') {
            None => path.to_owned(),
            Some((base, query)) => {
                let pairs: Vec<Cow<'_, str>> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((name, value)) if !value.is_empty() && self.is_secret_param(name) => {
                            Cow::Owned(format!("{name}={}", self.replace(value)))
                        }
                        _ => Cow::Borrowed(pair),
                    })
                    .collect();
                format!("{base}?{}", pairs.join("&"))
            }
        };
        self.scrub_text(&redacted).unwrap_or(redacted)
    }

    fn is_secret_param(&self, name: &str) -> bool {
        SECRET_QUERY_PARAMS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
            || self
                .query_params
                .iter()
                .any(|p| p.eq_ignore_ascii_case(name))
    }

    /// Replaces configured JSON pointers and scrubs key-shaped text from every
    /// string in the body (SSE data included; binary bodies byte-wise).
    pub fn redact_body(&self, body: &mut Body) {
        match body {
            Body::Empty { .. } => {}
            Body::Json { json, .. } => {
                self.redact_pointers(json);
                self.scrub_json(json);
                // Verbatim text with a secret in it no longer matches the document.
                body.forget_stale_verbatim();
            }
            Body::Text { text, .. } => self.scrub_in_place(text),
            Body::Base64 { base64, .. } | Body::Encoded { base64, .. } => {
                if let Cow::Owned(scrubbed) = self.scrub_bytes(base64) {
                    *base64 = scrubbed;
                }
            }
            Body::Sse {
                events,
                unterminated,
                ..
            } => {
                for event in events {
                    self.scrub_in_place(&mut event.data);
                    for field in [&mut event.event, &mut event.id, &mut event.wire]
                        .into_iter()
                        .flatten()
                    {
                        self.scrub_in_place(field);
                    }
                }
                if let Some(tail) = unterminated {
                    self.scrub_in_place(tail);
                }
            }
            Body::Ndjson { lines, .. } => {
                for line in lines {
                    self.redact_pointers(&mut line.json);
                    self.scrub_json(&mut line.json);
                }
            }
        }
    }

    fn redact_pointers(&self, json: &mut Value) {
        for pointer in &self.json_pointers {
            let Some(target) = json.pointer_mut(pointer) else {
                continue;
            };
            let replaced = match &*target {
                Value::Null => continue,
                Value::String(s) => self.replace(s),
                other => self.replace(&other.to_string()),
            };
            *target = Value::String(replaced);
        }
    }

    fn scrub_json(&self, json: &mut Value) {
        match json {
            Value::String(s) => self.scrub_in_place(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_json(v)),
            Value::Object(map) => {
                // A key pasted as an object's member name is as secret as one in a value.
                if map.keys().any(|name| self.scrub_text(name).is_some()) {
                    *map = std::mem::take(map)
                        .into_iter()
                        .map(|(name, v)| (self.scrub_text(&name).unwrap_or(name), v))
                        .collect();
                }
                map.values_mut().for_each(|v| self.scrub_json(v));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn scrub_in_place(&self, text: &mut String) {
        if let Some(scrubbed) = self.scrub_text(text) {
            *text = scrubbed;
        }
    }

    /// `Some(scrubbed)` when `text` held something secret-shaped.
    fn scrub_text(&self, text: &str) -> Option<String> {
        match self.scrub_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => None,
            Cow::Owned(bytes) => Some(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    fn scrub_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        patterns::scrub(&self.patterns, bytes, &|secret| self.placeholder(secret))
    }
}

#[cfg(test)]
mod tests;
