//! `llmsim-agent export --har`: a snapshot as a HAR 1.2 file, the format
//! browser devtools and HAR viewers open. Bodies are exported decoded, as
//! text (SSE as its `text/event-stream` text) or base64 for binary ones;
//! timings are the recorded time to first byte and duration. llmsim's own
//! fields (seq, provider, model, file) ride along as `_llmsim`, as the spec
//! allows for custom fields.

use std::path::{Path, PathBuf};

use llmsim_snapshot::model::{Body, Exchange, Headers, Scheme};
use llmsim_snapshot::store::{self, Recorded, StoreError};
use serde_json::{Value, json};
use time::UtcOffset;
use time::format_description::well_known::Rfc3339;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum HarError {
    /// The snapshot directory could not be loaded.
    #[error("cannot load snapshot {dir}")]
    Load {
        /// The snapshot directory.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<StoreError>,
    },
    /// The HAR document could not be serialized.
    #[error("cannot serialize the HAR file")]
    Serialize {
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The HAR file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The HAR file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the snapshot in `dir` to `out` as HAR; returns the number of
/// entries.
pub fn export(dir: &Path, out: &Path) -> Result<usize, HarError> {
    let snapshot = store::load(dir).map_err(|source| HarError::Load {
        dir: dir.to_owned(),
        source: Box::new(source),
    })?;
    let har = to_har(&snapshot.exchanges);
    let mut text =
        serde_json::to_string_pretty(&har).map_err(|source| HarError::Serialize { source })?;
    text.push('\n');
    std::fs::write(out, text).map_err(|source| HarError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(snapshot.exchanges.len())
}

/// The HAR document (`{"log": …}`) for `exchanges`, in capture order.
pub fn to_har(exchanges: &[Recorded]) -> Value {
    let entries: Vec<Value> = exchanges
        .iter()
        .map(|r| entry(&r.exchange, &r.path))
        .collect();
    json!({
        "log": {
            "version": "1.2",
            "creator": {"name": "llmsim-agent", "version": env!("CARGO_PKG_VERSION")},
            "pages": [],
            "entries": entries,
        }
    })
}

fn entry(exchange: &Exchange, file: &Path) -> Value {
    let request = &exchange.request;
    let response = &exchange.response;
    let ttfb = non_negative(exchange.ttfb_ms);
    let duration = non_negative(exchange.duration_ms).max(ttfb);
    let (wait, receive) = if response.status == 0 {
        (duration, 0.0)
    } else {
        (ttfb, duration - ttfb)
    };
    let started = exchange
        .started_at
        .to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default();
    let scheme = match exchange.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let path = if request.path.starts_with('/') {
        request.path.clone()
    } else {
        format!("/{}", request.path)
    };
    let request_body = request.body.to_bytes();
    let mut har_request = json!({
        "method": request.method,
        "url": format!("{scheme}://{}{path}", exchange.host),
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": headers(&request.headers),
        "queryString": query_string(&path),
        "headersSize": -1,
        "bodySize": request_body.len(),
    });
    if !request_body.is_empty() {
        har_request["postData"] = json!({
            "mimeType": request.headers.get("content-type").unwrap_or("application/octet-stream"),
            "text": String::from_utf8_lossy(&request_body),
        });
    }
    let mut entry = json!({
        "startedDateTime": started,
        "time": wait + receive,
        "request": har_request,
        "response": {
            "status": response.status,
            "statusText": reason_phrase(response.status),
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers(&response.headers),
            "content": content(&response.body, response.headers.get("content-type")),
            "redirectURL": response.headers.get("location").unwrap_or(""),
            "headersSize": -1,
            "bodySize": if response.body.content_encoding().is_some() {
                json!(-1)
            } else {
                json!(response.body.to_bytes().len())
            },
        },
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": 0,
            "wait": wait,
            "receive": receive,
        },
        "_llmsim": {
            "seq": exchange.seq,
            "provider": exchange.provider,
            "model": exchange.model,
            "streamed": exchange.streamed,
            "incomplete": exchange.incomplete,
            "file": file.file_name().map(|n| n.to_string_lossy().into_owned()),
        },
    });
    if let Some(peer) = exchange.peer {
        entry["serverIPAddress"] = json!(peer.ip().to_string());
    }
    if let Some(why) = &exchange.incomplete {
        entry["comment"] = json!(format!("incomplete: {why}"));
    }
    entry
}

/// `content`: decoded text, or base64 with `"encoding": "base64"`.
fn content(body: &Body, content_type: Option<&str>) -> Value {
    let bytes = body.to_bytes();
    let mut content = json!({
        "size": bytes.len(),
        "mimeType": content_type.unwrap_or(if bytes.is_empty() { "" } else { "application/octet-stream" }),
    });
    match body {
        Body::Empty { .. } => {}
        Body::Base64 { .. } | Body::Encoded { .. } => {
            // The body's own serde form already holds standard base64.
            let text = serde_json::to_value(body)
                .ok()
                .and_then(|v| v.get("base64").cloned())
                .unwrap_or_else(|| json!(""));
            content["text"] = text;
            content["encoding"] = json!("base64");
            if let Body::Encoded {
                content_encoding, ..
            } = body
            {
                content["comment"] = json!(format!("still {content_encoding}-encoded"));
            }
        }
        Body::Json { .. } | Body::Text { .. } | Body::Sse { .. } | Body::Ndjson { .. } => {
            content["text"] = json!(String::from_utf8_lossy(&bytes));
        }
    }
    content
}

fn headers(headers: &Headers) -> Vec<Value> {
    headers
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

/// The query parameters of a request target, percent-decoded.
fn query_string(path: &str) -> Vec<Value> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({"name": percent_decode(name), "value": percent_decode(value)})
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..=i + 2])
                    .ok()
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn non_negative(ms: f64) -> f64 {
    if ms.is_finite() && ms > 0.0 { ms } else { 0.0 }
}

/// The standard reason phrase, or `""`.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site is overloaded",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{exchange, sample_exchanges, snapshot_dir};

    fn require(v: &Value, key: &str, check: fn(&Value) -> bool, at: &str) {
        let field = v
            .get(key)
            .unwrap_or_else(|| panic!("{at}: missing {key} in {v}"));
        assert!(check(field), "{at}: {key} has the wrong type: {field}");
    }

    /// The fields HAR 1.2 requires, with their types.
    fn assert_valid_har(har: &Value) {
        let log = &har["log"];
        require(log, "version", |v| v == "1.2", "log");
        require(log, "creator", Value::is_object, "log");
        require(&log["creator"], "name", Value::is_string, "creator");
        require(&log["creator"], "version", Value::is_string, "creator");
        require(log, "entries", Value::is_array, "log");
        for (i, e) in log["entries"].as_array().unwrap().iter().enumerate() {
            let at = format!("entry {i}");
            require(e, "startedDateTime", Value::is_string, &at);
            let started = e["startedDateTime"].as_str().unwrap();
            assert!(
                time::OffsetDateTime::parse(started, &Rfc3339).is_ok(),
                "{at}: {started}"
            );
            require(e, "time", Value::is_number, &at);
            require(e, "cache", Value::is_object, &at);
            require(e, "timings", Value::is_object, &at);
            for key in ["send", "wait", "receive"] {
                require(&e["timings"], key, Value::is_number, &at);
            }
            let sum: f64 = ["blocked", "dns", "connect", "send", "wait", "receive"]
                .iter()
                .filter_map(|k| e["timings"][*k].as_f64())
                .filter(|v| *v >= 0.0)
                .sum();
            assert!(
                (sum - e["time"].as_f64().unwrap()).abs() < 1e-6,
                "{at}: time is the sum of the timings"
            );
            let req = &e["request"];
            for (key, check) in [
                ("method", Value::is_string as fn(&Value) -> bool),
                ("url", Value::is_string),
                ("httpVersion", Value::is_string),
                ("cookies", Value::is_array),
                ("headers", Value::is_array),
                ("queryString", Value::is_array),
                ("headersSize", Value::is_number),
                ("bodySize", Value::is_number),
            ] {
                require(req, key, check, &at);
            }
            if let Some(post) = req.get("postData") {
                require(post, "mimeType", Value::is_string, &at);
                require(post, "text", Value::is_string, &at);
            }
            for h in req["headers"].as_array().unwrap() {
                require(h, "name", Value::is_string, &at);
                require(h, "value", Value::is_string, &at);
            }
            let res = &e["response"];
            for (key, check) in [
                ("status", Value::is_number as fn(&Value) -> bool),
                ("statusText", Value::is_string),
                ("httpVersion", Value::is_string),
                ("cookies", Value::is_array),
                ("headers", Value::is_array),
                ("content", Value::is_object),
                ("redirectURL", Value::is_string),
                ("headersSize", Value::is_number),
                ("bodySize", Value::is_number),
            ] {
                require(res, key, check, &at);
            }
            require(&res["content"], "size", Value::is_number, &at);
            require(&res["content"], "mimeType", Value::is_string, &at);
            for key in e.as_object().unwrap().keys() {
                assert!(
                    [
                        "pageref",
                        "startedDateTime",
                        "time",
                        "request",
                        "response",
                        "cache",
                        "timings",
                        "serverIPAddress",
                        "connection",
                        "comment"
                    ]
                    .contains(&key.as_str())
                        || key.starts_with('_'),
                    "{at}: {key} is not a HAR field (custom fields start with _)"
                );
            }
        }
    }

    #[test]
    fn a_snapshot_exports_as_valid_har() {
        let mut exchanges = sample_exchanges();
        let mut binary = exchange(
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent?alt=json&key=%3Credacted%3Adeadbeef%3E&q=a+b",
            &serde_json::json!({}),
            0,
            &serde_json::json!({"kind": "base64", "base64": "AAEC/w=="}),
            "2026-07-01T09:00:09.25Z",
            (0.0, 12.5),
        );
        binary.incomplete = Some("no response was seen".into());
        exchanges.push(binary);
        let dir = snapshot_dir(&exchanges);
        let out = dir.path().join("run.har");
        assert_eq!(export(dir.path(), &out).unwrap(), exchanges.len());
        let har: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_valid_har(&har);
        let entries = har["log"]["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 7);

        let first = &entries[0];
        assert_eq!(
            first["request"]["url"],
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(first["startedDateTime"], "2026-07-01T09:00:00Z");
        assert_eq!(first["response"]["statusText"], "OK");
        assert_eq!(first["timings"]["wait"], 150.0);
        assert_eq!(first["time"], 200.0);
        assert_eq!(first["serverIPAddress"], "127.0.0.1");
        assert_eq!(
            first["_llmsim"]["file"],
            "000001-openai-post-v1-chat-completions.json"
        );
        assert!(
            first["request"]["postData"]["text"]
                .as_str()
                .unwrap()
                .contains("gpt-4o-mini")
        );
        assert!(
            first["response"]["content"]["text"]
                .as_str()
                .unwrap()
                .contains("chat.completion")
        );

        // SSE exports as its event-stream text.
        let sse = entries
            .iter()
            .find(|e| e["_llmsim"]["streamed"] == true)
            .unwrap();
        let text = sse["response"]["content"]["text"].as_str().unwrap();
        assert!(text.starts_with("event: message_start\ndata: {"), "{text}");
        assert!(text.ends_with("\n\n"), "{text}");

        let failed = entries
            .iter()
            .find(|e| e["response"]["status"] == 429)
            .unwrap();
        assert_eq!(failed["response"]["statusText"], "Too Many Requests");

        let last = &entries[6];
        assert_eq!(last["response"]["status"], 0);
        assert_eq!(last["response"]["content"]["encoding"], "base64");
        assert_eq!(last["response"]["content"]["text"], "AAEC/w==");
        assert_eq!(last["response"]["content"]["size"], 4);
        assert_eq!(last["timings"]["wait"], 12.5);
        assert_eq!(last["comment"], "incomplete: no response was seen");
        assert_eq!(
            last["request"]["queryString"],
            serde_json::json!([
                {"name": "alt", "value": "json"},
                {"name": "key", "value": "<redacted:deadbeef>"},
                {"name": "q", "value": "a b"}
            ])
        );
        assert!(last["request"].get("postData").is_some());
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(
            percent_decode("%+1"),
            "% 1",
            "not hex: kept, and + is a space"
        );
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn a_missing_snapshot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            export(&dir.path().join("nope"), &dir.path().join("x.har")),
            Err(HarError::Load { .. })
        ));
    }
}
