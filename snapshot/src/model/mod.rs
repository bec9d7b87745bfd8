//! The exchange model: one recorded HTTP request and its response, as the agent
//! captured it and as replayd serves it. This module owns the types and their
//! serde form; the body submodules own turning wire bytes into a stored body and
//! back. The on-disk layout around these types lives in [`crate::store`].

mod body;
mod encoding;
mod sse;
mod summary;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::provider::Provider;

pub use body::{Body, JsonStyle, NdjsonLine};
pub use encoding::{DecodeError, MAX_DECODED_LEN};
pub use sse::SseEvent;
pub use summary::{ExchangeSummary, TokenUsage, ToolCall};

/// The exchange file format this build writes and reads; bump on any change
/// that an older reader would misread.
pub const FORMAT_VERSION: u32 = 1;

/// One recorded HTTP exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// Always [`FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// Capture order within the snapshot; the writer assigns it.
    pub seq: u64,
    /// The provider, known from the host.
    pub provider: Provider,
    /// The host the client asked for (SNI or `Host`), without a port.
    pub host: String,
    /// Whether the connection was TLS.
    pub scheme: Scheme,
    /// The HTTP version the exchange was made with; left out for HTTP/1.1, which is what
    /// files written before it existed hold.
    #[serde(default, skip_serializing_if = "HttpVersion::is_http11")]
    pub http_version: HttpVersion,
    /// Which way the exchange went through the target; left out for outbound, the only kind
    /// files written before it existed hold.
    #[serde(default, skip_serializing_if = "Direction::is_outbound")]
    pub direction: Direction,
    /// For an inbound exchange, the `seq` of each outbound exchange the target made while
    /// serving it, in capture order; left out when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<u64>,
    /// The process that made the request (for an inbound exchange: the one that served it).
    pub process: ProcessInfo,
    /// The server address the client connected to, when known.
    pub peer: Option<SocketAddr>,
    /// Wall-clock time the request started, stored as RFC 3339 in UTC.
    #[serde(with = "rfc3339_utc")]
    pub started_at: OffsetDateTime,
    /// Milliseconds from request start to the first response byte.
    pub ttfb_ms: f64,
    /// Milliseconds from request start to the last response byte.
    pub duration_ms: f64,
    /// Why the exchange is not whole (bytes lost, connection ended early);
    /// `None` only when every byte of both messages was seen.
    pub incomplete: Option<String>,
    /// Whether the response arrived as a stream (SSE or chunked pieces).
    pub streamed: bool,
    /// The model the request named, when the provider knows where to look.
    pub model: Option<String>,
    /// Model, tokens, timing, stop reason and tool calls read from the
    /// bodies ([`crate::usage`]); left out of files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<ExchangeSummary>,
    /// The request as sent, after redaction.
    pub request: Request,
    /// The response as received, after redaction.
    pub response: Response,
}

impl Exchange {
    /// Whether every byte of the exchange was seen.
    pub fn is_complete(&self) -> bool {
        self.incomplete.is_none()
    }
}

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP (local servers such as Ollama or vLLM).
    Http,
    /// HTTP over TLS.
    Https,
}

/// The HTTP version of an exchange, as the snapshot spells it (`"1.1"`, `"2"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HttpVersion {
    /// HTTP/1.1.
    #[default]
    #[serde(rename = "1.1")]
    Http11,
    /// HTTP/2: one exchange per stream.
    #[serde(rename = "2")]
    Http2,
}

impl HttpVersion {
    /// Whether this is HTTP/1.1, the version a file that does not say holds.
    pub fn is_http11(&self) -> bool {
        *self == Self::Http11
    }
}

/// Which way an exchange went through the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The target called an API, such as an LLM provider: what replayd serves back to it.
    #[default]
    Outbound,
    /// The target served the request on one of its own ports (`--app-port`): what a
    /// regression replay or a load test sends to it again.
    Inbound,
}

impl Direction {
    /// Whether this is outbound, the direction a file that does not say holds.
    pub fn is_outbound(&self) -> bool {
        *self == Self::Outbound
    }
}

/// The process that made a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id at capture time.
    pub pid: u32,
    /// The kernel's short command name (`comm`, at most 15 bytes).
    pub comm: String,
    /// Path of the executable, lossily converted to UTF-8, when known.
    pub exe: Option<String>,
}

/// An HTTP request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The method, as sent (`POST`).
    pub method: String,
    /// The request target: path plus query string, already redacted.
    pub path: String,
    /// Header fields in wire order, duplicates kept.
    pub headers: Headers,
    /// The body, stored decoded.
    pub body: Body,
}

/// An HTTP response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields in wire order, duplicates kept. `Content-Encoding` and
    /// `Content-Length` describe the wire form, not the decoded body.
    pub headers: Headers,
    /// The body, stored decoded.
    pub body: Body,
    /// Trailer fields in wire order (gRPC's `grpc-status`, chunked trailers); left out when
    /// there are none.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub trailers: Headers,
}

/// Header fields as `[name, value]` pairs in wire order. A list rather than a
/// map because order and repeated names (`set-cookie`) are part of the message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first value of `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` in order, compared case-insensitively.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Headers that describe one connection rather than the message, never replayed or resent
/// (RFC 9110 section 7.6.1, plus the `proxy-*` family and `keep-alive`).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// Whether a header (lowercase name) describes one connection rather than the message.
pub fn is_hop_by_hop(lower: &str) -> bool {
    HOP_BY_HOP.contains(&lower) || lower.starts_with("proxy-")
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// RFC 3339 in UTC whatever offset the value carries, so files recorded in
/// different time zones compare and sort alike.
mod rfc3339_utc {
    use serde::{Deserialize, Deserializer, Serializer, de, ser};
    use time::format_description::well_known::Rfc3339;
    use time::{OffsetDateTime, UtcOffset};

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t
            .to_offset(UtcOffset::UTC)
            .format(&Rfc3339)
            .map_err(ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A small but complete exchange for tests across the crate.
    pub(crate) fn sample_exchange() -> Exchange {
        crate::fixtures::exchange(json!({
            "provider": "openai",
            "host": "api.openai.com",
            "scheme": "https",
            "process": {"pid": 4242, "comm": "python3", "exe": "/usr/bin/python3.11"},
            "peer": "127.0.0.1:443",
            "started_at": "2026-07-01T12:00:00.5+02:00",
            "ttfb_ms": 120.5,
            "duration_ms": 480.25,
            "model": "gpt-4o-mini",
            "request": {
                "method": "POST",
                "path": "/v1/chat/completions",
                "headers": [["content-type", "application/json"], ["x-dup", "1"], ["x-dup", "2"]],
                "body": {"kind": "json", "json": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}},
            },
            "response": {
                "status": 200,
                "headers": [["content-type", "application/json"]],
                "body": {"kind": "json", "content_encoding": "gzip", "json": {"id": "chatcmpl-1", "choices": []}},
            },
        }))
    }

    #[test]
    fn exchange_round_trips_through_json() {
        let ex = sample_exchange();
        let text = serde_json::to_string(&ex).unwrap();
        let back: Exchange = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ex);
    }

    #[test]
    fn started_at_is_written_in_utc() {
        let value = serde_json::to_value(sample_exchange()).unwrap();
        assert_eq!(value["started_at"], "2026-07-01T10:00:00.5Z");
    }

    #[test]
    fn headers_keep_order_and_duplicates() {
        let ex = sample_exchange();
        let value = serde_json::to_value(&ex.request.headers).unwrap();
        assert_eq!(
            value,
            json!([
                ["content-type", "application/json"],
                ["x-dup", "1"],
                ["x-dup", "2"]
            ])
        );
        assert_eq!(ex.request.headers.get("X-Dup"), Some("1"));
        assert_eq!(
            ex.request.headers.get_all("x-dup").collect::<Vec<_>>(),
            ["1", "2"]
        );
    }

    #[test]
    fn optional_fields_are_written_as_null() {
        let mut ex = sample_exchange();
        ex.peer = None;
        ex.model = None;
        let value = serde_json::to_value(&ex).unwrap();
        assert!(value["peer"].is_null() && value.get("peer").is_some());
        assert!(value.get("incomplete").is_some());
        assert!(ex.is_complete());
    }
}
