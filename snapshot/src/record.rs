//! Recording: the one way a raw HTTP exchange becomes a stored [`Exchange`]. Capture (the
//! agent, which sees a client's plaintext) and replayd's `--on-miss record` (which makes the
//! request itself) each describe what they saw as a [`RawExchange`]; this module decides the
//! exchange's host ([`addressed_host`], through the one authority parser, [`Authority`]),
//! decodes the bodies for storage, derives provider, model and streaming, and, through a
//! [`SnapshotRecorder`], redacts with the snapshot's `[redact]` rules and the per-machine
//! key, summarises usage and appends the file. What each path adds around it (capture's host
//! filter and writer thread, replayd's budget and live serving) stays with that path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::atomic::Owner;
use crate::authority::Authority;
use crate::config::{ConfigError, SnapshotConfig};
use crate::model::{
    Body, Direction, Exchange, FORMAT_VERSION, Headers, HttpVersion, ProcessInfo, Request,
    Response, Scheme,
};
use crate::paths;
use crate::provider::{self, Endpoint, Provider};
use crate::redact::{RedactError, Redactor, redaction_key};
use crate::store::{SnapshotWriter, StoreError};
use crate::usage;

/// Why a snapshot could not be opened for recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The snapshot directory cannot be appended to.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot's `llmsim.toml` could not be read (for its `[redact]` rules).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The redactor or the per-machine redaction key could not be set up.
    #[error(transparent)]
    Redaction(#[from] RedactError),
}

/// The host a request was for, lowercase and without a port: the `Host` header (or HTTP/2's
/// `:authority`), else the TLS server name; empty when neither says.
///
/// The header comes first because it is what the client addressed at the HTTP layer: the
/// server routes on it, it is there on plain-HTTP connections (local servers, replayd's
/// `--listen`) that have no SNI, and it is per request, while SNI names the server of a
/// whole TLS connection, is left out when the client connects to an IP address, and says
/// nothing about the request itself.
pub fn addressed_host(headers: &Headers, sni: Option<&str>) -> String {
    let header = headers
        .get(":authority")
        .or_else(|| headers.get("host"))
        .map(|h| Authority::parse(h).host)
        .filter(|h| !h.is_empty());
    let host = header.or_else(|| sni.map(|s| Authority::parse(s).host));
    host.unwrap_or_default().to_ascii_lowercase()
}

/// Header fields as stored: names as given, values as UTF-8 (invalid bytes replaced), in
/// order, duplicates kept.
pub fn headers<N, V>(fields: impl IntoIterator<Item = (N, V)>) -> Headers
where
    N: AsRef<str>,
    V: AsRef<[u8]>,
{
    Headers(
        fields
            .into_iter()
            .map(|(n, v)| {
                (
                    n.as_ref().to_owned(),
                    String::from_utf8_lossy(v.as_ref()).into_owned(),
                )
            })
            .collect(),
    )
}

/// A request as it was sent: the head's fields and the whole body, in its content coding.
#[derive(Clone, Debug)]
pub struct RawRequest<B> {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The request target: path and query string.
    pub target: String,
    /// The header fields ([`headers`]).
    pub headers: Headers,
    /// The body with any transfer coding removed.
    pub body: B,
}

/// A response as it arrived.
#[derive(Clone, Debug)]
pub struct RawResponse<B> {
    /// The status code.
    pub status: u16,
    /// The header fields ([`headers`]).
    pub headers: Headers,
    /// Milliseconds from the request's start to the response's first byte.
    pub first_byte_ms: f64,
    /// The body with any transfer coding removed, one segment per read, each with the
    /// milliseconds from the request's start at which it arrived.
    pub body: Vec<(f64, B)>,
    /// Trailer fields, in wire order.
    pub trailers: Headers,
}

/// One HTTP exchange as a recording path saw it, before anything is decided about it.
#[derive(Clone, Debug)]
pub struct RawExchange<B> {
    /// The request.
    pub request: RawRequest<B>,
    /// The final response; `None` when none was seen.
    pub response: Option<RawResponse<B>>,
    /// Wall-clock time the request started.
    pub started_at: OffsetDateTime,
    /// Milliseconds from the request's start to the last byte seen of either message.
    pub duration_ms: f64,
    /// The TLS server name, if the connection had one.
    pub sni: Option<String>,
    /// The server address connected to, when known.
    pub peer: Option<SocketAddr>,
    /// The process that made the request (for an inbound exchange: the one that served it).
    pub process: ProcessInfo,
    /// Whether the target made the request or served it.
    pub direction: Direction,
    /// Whether the connection was TLS.
    pub scheme: Scheme,
    /// The HTTP version the exchange was made with.
    pub http_version: HttpVersion,
    /// Why the recording path knows the exchange is not whole (bytes lost, the connection
    /// ended early), if it does.
    pub incomplete: Option<String>,
}

impl<B: AsRef<[u8]>> RawExchange<B> {
    /// The host the exchange is stored under ([`addressed_host`]).
    pub fn host(&self) -> String {
        addressed_host(&self.request.headers, self.sni.as_deref())
    }

    /// The stored exchange: bodies decoded for storage (one that cannot be decoded is kept
    /// as its bytes and flags the exchange incomplete), provider, model and streaming derived
    /// from host, target and bodies, then redacted by `redactor` when there is one, then its
    /// usage summarised. A missing response is stored as status 0 with no body, flagged.
    pub fn into_exchange(self, redactor: Option<&Redactor>) -> Exchange {
        let host = self.host();
        let Self {
            request,
            response,
            started_at,
            duration_ms,
            sni: _,
            peer,
            process,
            direction,
            scheme,
            http_version,
            mut incomplete,
        } = self;
        let request_body = decode(&request.headers, &[(0.0, request.body)], &mut incomplete);
        let (response, ttfb_ms) = if let Some(r) = response {
            let body = decode(&r.headers, &r.body, &mut incomplete);
            let response = Response {
                status: r.status,
                headers: r.headers,
                body,
                trailers: r.trailers,
            };
            (response, r.first_byte_ms)
        } else {
            incomplete.get_or_insert_with(|| "no response was seen".into());
            let response = Response {
                status: 0,
                headers: Headers::default(),
                body: Body::Empty {
                    content_encoding: None,
                },
                trailers: Headers::default(),
            };
            (response, 0.0)
        };
        // A request the target served is the app's own API, not a provider's.
        let provider = match direction {
            Direction::Outbound => Provider::from_host(&host),
            Direction::Inbound => Provider::Generic,
        };
        let endpoint = Endpoint::classify(&request.method, &request.target);
        let json = request_body.json();
        let model = provider::model_of(endpoint, &request.target, json);
        let streamed =
            response.body.sse_events().is_some() || provider::is_streaming(endpoint, json);
        let mut exchange = Exchange {
            format_version: FORMAT_VERSION,
            seq: 0,
            provider,
            host,
            scheme,
            http_version,
            direction,
            linked: Vec::new(),
            process,
            peer,
            started_at,
            ttfb_ms,
            duration_ms,
            incomplete,
            streamed,
            model,
            summary: None,
            request: Request {
                method: request.method,
                path: request.target,
                headers: request.headers,
                body: request_body,
            },
            response,
        };
        if let Some(redactor) = redactor {
            redactor.redact_exchange(&mut exchange);
        }
        exchange.summary = usage::summarize(&exchange);
        exchange
    }
}

/// Decodes a body for storage; one that cannot be decoded is kept as its bytes and
/// `incomplete` says why (unless it already says something).
fn decode<B: AsRef<[u8]>>(
    headers: &Headers,
    segments: &[(f64, B)],
    incomplete: &mut Option<String>,
) -> Body {
    let (body, error) = Body::for_storage(
        headers.get("content-type"),
        headers.get("content-encoding"),
        segments,
    );
    if let Some(error) = error {
        incomplete.get_or_insert_with(|| format!("body could not be decoded: {error}"));
    }
    body
}

/// Records into one snapshot directory: the snapshot's redactor (its `[redact]` rules with
/// the per-machine key) and its writer, which assigns seq and never overwrites. Directories
/// and files it creates belong to the user who ran the command, also under sudo.
#[derive(Debug)]
pub struct SnapshotRecorder {
    redactor: Redactor,
    writer: SnapshotWriter,
}

impl SnapshotRecorder {
    /// Opens (creating, or appending to) the snapshot in `dir`, with the redaction key kept
    /// in `key_dir` (default: the user's data directory).
    pub fn open(dir: &Path, key_dir: Option<&Path>) -> Result<Self, RecordError> {
        let writer = SnapshotWriter::open_as(dir, Owner::invoking_user())?;
        let config = SnapshotConfig::load(dir)?;
        let key = match key_dir {
            Some(key_dir) => redaction_key(key_dir)?,
            None => redaction_key(&paths::data_dir().ok_or(RedactError::NoDataDir)?)?,
        };
        let redactor = Redactor::new(&config.redact, key)?;
        Ok(Self { redactor, writer })
    }

    /// `raw` as it is stored: built, redacted and summarised
    /// ([`RawExchange::into_exchange`]).
    pub fn exchange<B: AsRef<[u8]>>(&self, raw: RawExchange<B>) -> Exchange {
        raw.into_exchange(Some(&self.redactor))
    }

    /// Appends `exchange` to the snapshot; the file it was written to.
    pub fn write(&mut self, exchange: &Exchange) -> Result<PathBuf, StoreError> {
        self.writer.write(exchange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_wins_over_sni_and_loses_its_port() {
        let with_host = headers([("Host", "API.OpenAI.com:443")]);
        assert_eq!(
            addressed_host(&with_host, Some("other.example")),
            "api.openai.com"
        );
        let none = Headers::default();
        assert_eq!(
            addressed_host(&none, Some("api.anthropic.com")),
            "api.anthropic.com"
        );
        assert_eq!(addressed_host(&headers([("host", "::1")]), None), "::1");
        assert_eq!(addressed_host(&headers([("host", "")]), Some("a.b")), "a.b");
        assert_eq!(
            addressed_host(&headers([(":authority", "[::1]:8443")]), None),
            "::1"
        );
        assert_eq!(addressed_host(&none, None), "");
    }

    const SECRET: &str = "sk-proj-RECORDSECRET0123456789abcdefghij";

    /// One streamed chat completion, as either recording path describes it. `process` and
    /// `sni` are what the paths fill in differently: capture sees the app's process and its
    /// TLS server name; replayd made the request itself and, behind `--listen`, has no SNI.
    /// The rest is the same message either way; what differs before recording starts (replayd
    /// gets header names lowercased from its HTTP server, capture sees them as sent; each
    /// path times and dates its own connection) is not this module's to decide.
    fn raw(process: ProcessInfo, sni: Option<&str>) -> RawExchange<Vec<u8>> {
        let request_body = format!(
            r#"{{"model":"gpt-4o-mini","stream":true,"messages":[{{"role":"user","content":"hi {SECRET}"}}]}}"#
        );
        let events = [
            r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"hello"},"finish_reason":null}]}"#,
            r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
            "data: [DONE]",
        ];
        let authorization = format!("Bearer {SECRET}");
        RawExchange {
            request: RawRequest {
                method: "POST".into(),
                target: "/v1/chat/completions?key=abc".into(),
                headers: headers([
                    ("Host", "API.openai.com:443".as_bytes()),
                    ("Authorization", authorization.as_bytes()),
                    ("Content-Type", b"application/json".as_slice()),
                    ("X-Odd", b"caf\xe9".as_slice()),
                ]),
                body: request_body.into_bytes(),
            },
            response: Some(RawResponse {
                status: 200,
                headers: headers([
                    ("content-type", "text/event-stream"),
                    ("x-request-id", "req_1"),
                ]),
                first_byte_ms: 120.5,
                body: events
                    .iter()
                    .zip([130.0, 180.25, 181.0])
                    .map(|(event, ms)| (ms, format!("{event}\n\n").into_bytes()))
                    .collect(),
                trailers: Headers::default(),
            }),
            started_at: OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap(),
            duration_ms: 181.5,
            sni: sni.map(str::to_owned),
            peer: Some("[2606:4700::6810:7b60]:443".parse().unwrap()),
            process,
            direction: Direction::Outbound,
            scheme: Scheme::Https,
            http_version: HttpVersion::Http11,
            incomplete: None,
        }
    }

    /// The file text without its `process` object, which must be there.
    fn without_process(text: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        let mut seen = false;
        for line in text.split_inclusive('\n') {
            if line == "  \"process\": {\n" {
                (inside, seen) = (true, true);
            } else if inside {
                inside = line != "  },\n";
            } else {
                out.push_str(line);
            }
        }
        assert!(seen, "no process object in\n{text}");
        out
    }

    #[test]
    fn capture_and_replay_record_the_same_file_but_for_the_process() {
        let root = tempfile::tempdir().unwrap();
        let key_dir = root.path().join("key");
        let capture_process = ProcessInfo {
            pid: 4242,
            comm: "python3".into(),
            exe: Some("/usr/bin/python3.11".into()),
        };
        let replay_process = ProcessInfo {
            pid: 99,
            comm: "replayd".into(),
            exe: None,
        };
        let mut files = Vec::new();
        for (name, raw) in [
            (
                "capture",
                raw(capture_process.clone(), Some("api.openai.com")),
            ),
            ("replay", raw(replay_process.clone(), None)),
        ] {
            let dir = root.path().join(name);
            let mut recorder = SnapshotRecorder::open(&dir, Some(&key_dir)).unwrap();
            let exchange = recorder.exchange(raw);
            let path = recorder.write(&exchange).unwrap();
            files.push((exchange, path.strip_prefix(&dir).unwrap().to_owned(), path));
        }
        let [
            (captured, capture_name, capture_path),
            (replayed, replay_name, replay_path),
        ] = <[_; 2]>::try_from(files).unwrap();
        // What may differ: the process that made the request. Nothing else.
        assert_eq!(
            (&captured.process, &replayed.process),
            (&capture_process, &replay_process)
        );
        assert_eq!(capture_name, replay_name);
        let capture_text = std::fs::read_to_string(&capture_path).unwrap();
        let replay_text = std::fs::read_to_string(&replay_path).unwrap();
        assert_eq!(
            without_process(&capture_text),
            without_process(&replay_text)
        );
        // And what both decided: host, redaction, decoding, derivations, summary.
        assert_eq!(captured.host, "api.openai.com");
        assert_eq!(captured.provider, Provider::OpenAi);
        assert_eq!(captured.model.as_deref(), Some("gpt-4o-mini"));
        assert!(captured.streamed && captured.is_complete());
        assert!(!capture_text.contains(SECRET), "{capture_text}");
        assert!(!capture_text.contains("key=abc"), "{capture_text}");
        assert!(captured.summary.is_some());
        assert_eq!(captured.request.headers.get("x-odd"), Some("caf\u{fffd}"));
    }

    #[test]
    fn a_missing_response_or_an_undecodable_body_flags_the_exchange() {
        let process = ProcessInfo {
            pid: 1,
            comm: String::new(),
            exe: None,
        };
        let mut no_answer = raw(process.clone(), None);
        no_answer.response = None;
        let exchange = no_answer.into_exchange(None);
        assert_eq!(exchange.response.status, 0);
        assert_eq!(exchange.ttfb_ms, 0.0);
        assert_eq!(exchange.incomplete.as_deref(), Some("no response was seen"));
        let mut garbled = raw(process, None);
        garbled
            .request
            .headers
            .0
            .push(("Content-Encoding".into(), "gzip".into()));
        let exchange = garbled.into_exchange(None);
        assert!(
            exchange
                .incomplete
                .as_deref()
                .is_some_and(|why| why.starts_with("body could not be decoded: ")),
            "{:?}",
            exchange.incomplete
        );
    }
}
