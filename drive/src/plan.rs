//! What to send and where: the snapshot's inbound exchanges as [`Planned`] requests (the
//! request to send again, the answer it got), and the `--target` URL as a [`Target`].
//! `--unique` pointers are checked here, and [`Planned::body_for_copy`] applies them.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use llmsim_snapshot::config::CompareRules;
use llmsim_snapshot::model::{Direction, is_hop_by_hop};
use llmsim_snapshot::store::{self, StoreError};
use serde_json::Value;

use crate::compare::Expected;

/// Why the snapshot cannot be driven.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The snapshot could not be read.
    #[error("cannot read the snapshot")]
    Snapshot {
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The snapshot holds no inbound exchange to send.
    #[error(
        "{dir} holds no inbound exchanges (requests the app served, recorded with capture --app-port)"
    )]
    NoInbound {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// A recorded request cannot be sent again as it is.
    #[error("exchange {seq}: cannot send {what} again")]
    Unsendable {
        /// The exchange's `seq`.
        seq: u64,
        /// The method, path or header at fault.
        what: String,
    },
    /// A `--unique` pointer is not an RFC 6901 pointer, or names no string in a request.
    #[error("--unique {pointer}: {reason}")]
    Unique {
        /// The pointer given.
        pointer: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a `--target` URL is not one.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a URL.
    #[error("invalid target URL {url:?}")]
    Parse {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// Not `http://HOST[:PORT][/PREFIX]` or `https://...`.
    #[error("invalid target URL {url:?}: expected http://HOST[:PORT] or https://HOST[:PORT]")]
    Shape {
        /// The URL given.
        url: String,
    },
}

/// Where the requests go: `http[s]://HOST[:PORT][/PREFIX]`; each recorded path is sent
/// under the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Whether to speak TLS.
    pub tls: bool,
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port, 80 or 443 unless given.
    pub port: u16,
    /// The `Host` header: the URL's authority.
    pub authority: HeaderValue,
    /// The path prefix, without a trailing `/` (empty for none).
    pub prefix: String,
}

impl Target {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let uri: Uri = url.parse().map_err(|source| TargetError::Parse {
            url: url.to_owned(),
            source,
        })?;
        let shape = || TargetError::Shape {
            url: url.to_owned(),
        };
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(shape()),
        };
        let authority = uri.authority().ok_or_else(shape)?;
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(shape());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(shape());
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: HeaderValue::from_str(authority.as_str()).map_err(|_| shape())?,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The `HOST:PORT` to connect to.
    pub fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }
}

/// Request headers not sent again besides the hop-by-hop ones ([`is_hop_by_hop`]): the ones
/// the driver sets itself.
const SET_BY_THE_DRIVER: [&str; 4] = ["host", "content-length", "expect", "content-encoding"];

/// Whether a recorded request header is left out when the request is sent again.
fn not_resent(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    is_hop_by_hop(&lower) || SET_BY_THE_DRIVER.contains(&lower.as_str())
}

/// One inbound exchange, ready to send again.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The exchange's `seq`.
    pub seq: u64,
    /// The request method.
    pub method: Method,
    /// The path and query, as recorded.
    pub path: String,
    /// The recorded headers, less those [`not_resent`] (the body's wire Content-Encoding
    /// put back).
    pub headers: HeaderMap,
    /// The request body as recorded.
    pub body: Bytes,
    /// The body as JSON, when `--unique` rewrites it per copy.
    unique_json: Option<Value>,
    /// The recorded answer.
    pub expected: Expected,
    /// How many outbound (LLM) calls the app made while serving it.
    pub linked: u64,
}

impl Planned {
    /// The body for copy `copy`: as recorded for copy 0 or without `--unique`, else
    /// with `-copyN` appended to each `--unique` string.
    pub fn body_for_copy(&self, copy: u64, unique: &[String]) -> Bytes {
        match &self.unique_json {
            Some(json) if copy > 0 => {
                let mut json = json.clone();
                for pointer in unique {
                    if let Some(Value::String(s)) = json.pointer_mut(pointer) {
                        s.push_str("-copy");
                        s.push_str(&copy.to_string());
                    }
                }
                Bytes::from(serde_json::to_vec(&json).unwrap_or_else(|_| self.body.to_vec()))
            }
            _ => self.body.clone(),
        }
    }
}

/// The requests to send, in recorded order, and the rules to compare their answers by.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The inbound exchanges, by `seq`.
    pub requests: Vec<Planned>,
    /// The snapshot's `[compare]` rules.
    pub compare: CompareRules,
}

impl Plan {
    /// Reads the inbound exchanges of the snapshot in `dir`; `unique` are the `--unique`
    /// pointers, each of which must name a string in every request body.
    pub fn load(dir: &Path, unique: &[String]) -> Result<Self, PlanError> {
        let snapshot = store::load(dir).map_err(|source| PlanError::Snapshot { source })?;
        let mut requests = Vec::new();
        for recorded in snapshot.exchanges {
            let exchange = recorded.exchange;
            if exchange.direction != Direction::Inbound || !exchange.is_complete() {
                continue;
            }
            let seq = exchange.seq;
            let unsendable = |what: String| PlanError::Unsendable { seq, what };
            let method = Method::from_bytes(exchange.request.method.as_bytes())
                .map_err(|_| unsendable(format!("method {:?}", exchange.request.method)))?;
            if !exchange.request.path.starts_with('/')
                || exchange
                    .request
                    .path
                    .parse::<http::uri::PathAndQuery>()
                    .is_err()
            {
                return Err(unsendable(format!("path {:?}", exchange.request.path)));
            }
            let mut headers = HeaderMap::new();
            for (name, value) in exchange.request.headers.iter() {
                if not_resent(name) {
                    continue;
                }
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) else {
                    return Err(unsendable(format!("header {name:?}")));
                };
                headers.append(name, value);
            }
            let body = &exchange.request.body;
            if let Some(coding) = body.wire_content_encoding() {
                let value = HeaderValue::from_str(coding)
                    .map_err(|_| unsendable(format!("content-encoding {coding:?}")))?;
                headers.insert(header::CONTENT_ENCODING, value);
            }
            let unique_json = unique_json(seq, body.json(), unique)?;
            requests.push(Planned {
                seq,
                method,
                path: exchange.request.path.clone(),
                headers,
                body: Bytes::from(body.to_bytes()),
                unique_json,
                expected: Expected::new(exchange.response),
                linked: exchange.linked.len() as u64,
            });
        }
        if requests.is_empty() {
            return Err(PlanError::NoInbound {
                dir: dir.to_owned(),
            });
        }
        requests.sort_by_key(|r| r.seq);
        Ok(Self {
            requests,
            compare: snapshot.config.compare,
        })
    }
}

/// The body to rewrite per copy, once every `--unique` pointer is checked against it.
fn unique_json(
    seq: u64,
    json: Option<&Value>,
    unique: &[String],
) -> Result<Option<Value>, PlanError> {
    if unique.is_empty() {
        return Ok(None);
    }
    for pointer in unique {
        let bad = |reason: String| PlanError::Unique {
            pointer: pointer.clone(),
            reason,
        };
        if !pointer.starts_with('/') {
            return Err(bad("not a JSON pointer (it starts with /)".to_owned()));
        }
        match json.and_then(|json| json.pointer(pointer)) {
            Some(Value::String(_)) => {}
            _ => {
                return Err(bad(format!(
                    "the body of exchange {seq} has no string there"
                )));
            }
        }
    }
    Ok(json.cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let target = Target::parse("http://127.0.0.1:8080").unwrap();
        assert!(!target.tls);
        assert_eq!(target.address(), ("127.0.0.1", 8080));
        assert_eq!(target.prefix, "");
        let target = Target::parse("https://[::1]/api/").unwrap();
        assert!(target.tls);
        assert_eq!(target.address(), ("::1", 443));
        assert_eq!(target.authority, "[::1]");
        assert_eq!(target.prefix, "/api");
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://",
            "http://a/?q=1",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unique_appends_the_copy_to_each_pointer() {
        let json = serde_json::json!({"id": "T-1", "n": 1});
        let planned = Planned {
            seq: 1,
            method: Method::POST,
            path: "/".into(),
            headers: HeaderMap::new(),
            body: Bytes::from(serde_json::to_vec(&json).unwrap()),
            unique_json: unique_json(1, Some(&json), &["/id".into()]).unwrap(),
            expected: Expected::new(llmsim_snapshot::model::Response {
                status: 200,
                headers: llmsim_snapshot::model::Headers::default(),
                body: llmsim_snapshot::model::Body::default(),
                trailers: llmsim_snapshot::model::Headers::default(),
            }),
            linked: 0,
        };
        let unique = ["/id".to_owned()];
        assert_eq!(planned.body_for_copy(0, &unique), planned.body);
        assert_eq!(
            planned.body_for_copy(2, &unique),
            Bytes::from_static(br#"{"id":"T-1-copy2","n":1}"#)
        );
        assert!(unique_json(1, Some(&json), &["/n".into()]).is_err());
        assert!(unique_json(1, Some(&json), &["id".into()]).is_err());
        assert!(unique_json(1, None, &["/id".into()]).is_err());
    }
}
