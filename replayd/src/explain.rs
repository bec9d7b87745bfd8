//! `replayd explain`: what replay would do with one request, without serving anything.
//! The request is a JSON file `{"method", "host", "path", "headers", "body"}` (`headers`
//! as `[[name, value], ...]` or an object, `body` the JSON document sent, or `body_text`
//! for a body that is not JSON); the answer names the recording that would be served, or,
//! for a miss, the nearest recorded request and a field-level diff, as the app would see
//! in its error.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};
use serde::Deserialize;
use serde_json::Value;

use crate::engine::{Engine, Miss, Outcome};
use crate::request::ReplayRequest;

/// Why the request file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The request file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a request object.
    #[error("cannot parse {path}")]
    Parse {
        /// The request file.
        path: PathBuf,
        /// What is wrong and where.
        #[source]
        source: serde_json::Error,
    },
    /// A header name is not valid HTTP.
    #[error("header name {name:?} is not valid HTTP")]
    HeaderName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: InvalidHeaderName,
    },
    /// A header value is not valid HTTP.
    #[error("the value of header {name:?} is not valid HTTP")]
    HeaderValue {
        /// The header's name.
        name: String,
        /// Why.
        #[source]
        source: InvalidHeaderValue,
    },
}

/// The request file's contents.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    /// The method; `POST` when left out.
    #[serde(default = "post")]
    pub method: String,
    /// The host the app would ask for.
    pub host: String,
    /// Path and query string.
    pub path: String,
    /// Headers, as pairs or an object.
    #[serde(default)]
    pub headers: HeaderList,
    /// The JSON body; absent or null for none.
    #[serde(default)]
    pub body: Option<Value>,
    /// A body that is not JSON, as text.
    #[serde(default)]
    pub body_text: Option<String>,
}

fn post() -> String {
    "POST".to_owned()
}

/// Headers as `[[name, value], ...]` or `{"name": "value"}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum HeaderList {
    /// Pairs in order.
    Pairs(Vec<(String, String)>),
    /// An object.
    Map(BTreeMap<String, String>),
}

impl Default for HeaderList {
    fn default() -> Self {
        Self::Pairs(Vec::new())
    }
}

impl RequestFile {
    /// Reads and parses a request file.
    pub fn read(path: &Path) -> Result<Self, ExplainError> {
        let text = std::fs::read(path).map_err(|source| ExplainError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ExplainError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The request as the engine sees it.
    pub fn to_request(&self) -> Result<ReplayRequest, ExplainError> {
        let pairs: Vec<(&str, &str)> = match &self.headers {
            HeaderList::Pairs(pairs) => pairs
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            HeaderList::Map(map) => map.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|source| {
                ExplainError::HeaderName {
                    name: name.to_owned(),
                    source,
                }
            })?;
            let header_value =
                HeaderValue::from_str(value).map_err(|source| ExplainError::HeaderValue {
                    name: name.to_owned(),
                    source,
                })?;
            headers.append(header_name, header_value);
        }
        let body = match (&self.body, &self.body_text) {
            (Some(json), _) if !json.is_null() => Bytes::from(json.to_string()),
            (_, Some(text)) => Bytes::from(text.clone()),
            _ => Bytes::new(),
        };
        Ok(ReplayRequest {
            method: self.method.to_ascii_uppercase(),
            host: self.host.clone(),
            path: self.path.clone(),
            headers,
            body,
        })
    }
}

/// What replay would do.
#[derive(Clone, Debug)]
pub enum Explanation {
    /// It would serve this recording.
    Hit {
        /// `METHOD host/path`.
        request: String,
        /// The request's signature, hex.
        signature: String,
        /// The exchange file.
        file: PathBuf,
    },
    /// Nothing matches.
    Miss {
        /// The request's signature, hex.
        signature: String,
        /// The miss, with the closest recording.
        miss: Box<Miss>,
    },
}

impl Explanation {
    /// Whether a recording matches.
    pub fn is_hit(&self) -> bool {
        matches!(self, Self::Hit { .. })
    }
}

/// Looks `request` up without counting it.
pub fn explain(engine: &Engine, request: &ReplayRequest) -> Explanation {
    let signature = engine.signature(request).hex();
    match engine.lookup(request) {
        Outcome::Hit(hit) => Explanation::Hit {
            request: request.describe(),
            signature,
            file: hit.entry.file.clone(),
        },
        Outcome::Miss(miss) => Explanation::Miss { signature, miss },
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hit {
                request,
                signature,
                file,
            } => {
                writeln!(f, "match: {request}")?;
                writeln!(f, "served from {}", file.display())?;
                writeln!(f, "signature {signature}")
            }
            Self::Miss { signature, miss } => {
                writeln!(f, "miss: {}: {}", miss.request, miss.reason())?;
                writeln!(f, "signature {signature}")?;
                match &miss.closest {
                    None => writeln!(f, "the snapshot has no recordings"),
                    Some(closest) => {
                        writeln!(f, "closest recording: {}", closest.file.display())?;
                        if closest.diffs.is_empty() {
                            writeln!(f, "  (no field differs)")?;
                        }
                        for diff in &closest.diffs {
                            writeln!(f, "  {diff}")?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::ReplayOptions;
    use crate::testutil::{exchange, snapshot};
    use serde_json::json;

    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = snapshot(&[exchange("What is the capital of France?", json!({}))]);
        let engine = Engine::load(dir.path(), ReplayOptions::default()).unwrap();
        (dir, engine)
    }

    fn request(value: Value) -> ReplayRequest {
        serde_json::from_value::<RequestFile>(value)
            .unwrap()
            .to_request()
            .unwrap()
    }

    #[test]
    fn a_matching_request_names_its_recording() {
        let (_dir, engine) = engine();
        let req = request(json!({
            "host": "api.openai.com",
            "path": "/v1/chat/completions",
            "headers": {"content-type": "application/json"},
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        }));
        let explanation = explain(&engine, &req);
        assert!(explanation.is_hit(), "{explanation}");
        let text = explanation.to_string();
        assert!(
            text.contains("exchanges/000001-openai-post-v1-chat-completions.json"),
            "{text}"
        );
        // Explaining does not use the recording up.
        assert!(explain(&engine, &req).is_hit());
        assert_eq!(engine.stats().report().total_served, 0);
    }

    #[test]
    fn a_miss_shows_the_diff() {
        let (_dir, engine) = engine();
        let req = request(json!({
            "method": "post",
            "host": "api.openai.com",
            "path": "/v1/chat/completions",
            "headers": [["content-type", "application/json"]],
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
        }));
        let text = explain(&engine, &req).to_string();
        assert!(
            text.contains(r#"/messages/0/content: recorded "What is the capital of France?", requested "What is the capital of Spain?""#),
            "{text}"
        );
        assert!(
            text.starts_with("miss: POST api.openai.com/v1/chat/completions: no recording matches"),
            "{text}"
        );
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("req.json");
        std::fs::write(&path, r#"{"host": "h", "path": "/", "bogus": 1}"#).unwrap();
        assert!(matches!(
            RequestFile::read(&path),
            Err(ExplainError::Parse { .. })
        ));
        assert!(matches!(
            RequestFile::read(&dir.path().join("missing.json")),
            Err(ExplainError::Read { .. })
        ));
        let file: RequestFile = serde_json::from_value(
            json!({"host": "h", "path": "/", "headers": [["bad name", "x"]]}),
        )
        .unwrap();
        assert!(matches!(
            file.to_request(),
            Err(ExplainError::HeaderName { .. })
        ));
    }
}
