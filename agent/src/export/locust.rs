//! `llmsim-agent export --locust`: a snapshot's inbound requests (those the app
//! served while it was recorded) as a Locust load test. The locustfile has one
//! task per request, which sends it as recorded: its method, its path, the
//! headers that describe the message (not the connection's hop-by-hop ones, not
//! `Host` or `Content-Length`, which Locust's host and the bytes sent decide,
//! not those whose value was redacted), and its body as the recorded bytes. A
//! task passes when the app answers with the recorded status. Locust's own
//! master and workers then run it at any scale, against apps that each run
//! under `replayd`, which answers their LLM calls from the same snapshot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use llmsim_snapshot::model::{Body, Direction, Headers, is_hop_by_hop};
use llmsim_snapshot::redact::contains_placeholder;
use llmsim_snapshot::store::{self, Recorded, StoreError};

/// Why a locustfile could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LocustError {
    /// The snapshot directory could not be loaded.
    #[error("cannot load snapshot {dir}")]
    Load {
        /// The snapshot directory.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<StoreError>,
    },
    /// The snapshot holds no whole inbound request to send.
    #[error(
        "snapshot {dir} holds no whole inbound request (record the app's own port with `capture --app-port PORT`)"
    )]
    NoInbound {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// The default host is not an `http://` or `https://` URL.
    #[error("--host {host:?} is not an http:// or https:// URL")]
    Host {
        /// The host as given.
        host: String,
    },
    /// The locustfile could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The locustfile.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exported {
    /// Requests written as tasks.
    pub requests: usize,
    /// Inbound exchanges left out because they were not recorded whole.
    pub incomplete: usize,
}

/// Writes the inbound requests of the snapshot in `dir` to `out` as a
/// locustfile; `host` (the app's base URL) is its default for Locust's `--host`.
pub fn export(dir: &Path, out: &Path, host: Option<&str>) -> Result<Exported, LocustError> {
    if let Some(host) = host
        && !(host.starts_with("http://") || host.starts_with("https://"))
    {
        return Err(LocustError::Host {
            host: host.to_owned(),
        });
    }
    let snapshot = store::load(dir).map_err(|source| LocustError::Load {
        dir: dir.to_owned(),
        source: Box::new(source),
    })?;
    let (whole, incomplete): (Vec<&Recorded>, Vec<&Recorded>) = snapshot
        .exchanges
        .iter()
        .filter(|r| r.exchange.direction == Direction::Inbound)
        .partition(|r| r.exchange.is_complete());
    if whole.is_empty() {
        return Err(LocustError::NoInbound {
            dir: dir.to_owned(),
        });
    }
    let text = locustfile(dir, &whole, host);
    std::fs::write(out, text).map_err(|source| LocustError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(Exported {
        requests: whole.len(),
        incomplete: incomplete.len(),
    })
}

/// The locustfile for `inbound` (whole inbound exchanges, in capture order)
/// from the snapshot in `dir`.
pub fn locustfile(dir: &Path, inbound: &[&Recorded], host: Option<&str>) -> String {
    let dir = comment_text(&dir.display().to_string());
    let mut py = format!(
        "\
# A Locust load test written by `llmsim-agent export --locust` (llmsim {version}) from the
# snapshot {dir}: the inbound requests recorded there (those the app served), {n} in all.
# Each task sends one of them as recorded (method, path, headers, body bytes) and
# passes when the app answers with the recorded status. Headers that describe the
# connection, Host, Content-Length and those whose value was redacted are left out.
#
# Run it against the app running under replayd, which answers the app's own LLM
# calls from the same snapshot:
#
#   replayd --in {dir} -- APP...
#   locust -f THIS_FILE --headless --host http://HOST:PORT --users 10 --run-time 1m
#
# A fleet: one master, and workers on as many machines as the load needs:
#
#   locust -f THIS_FILE --headless --master --expect-workers N --host http://HOST:PORT
#   locust -f THIS_FILE --worker --master-host MASTER

from locust import HttpUser, constant, task


class RecordedRequests(HttpUser):
    \"\"\"The recorded inbound requests, one task each, picked at random with equal weights.
    Each simulated user sends one after another (a closed loop); set wait_time to pace them.\"\"\"

    wait_time = constant(0)
",
        version = env!("CARGO_PKG_VERSION"),
        n = inbound.len(),
    );
    match host {
        Some(host) => {
            let _ = writeln!(
                py,
                "    # The app's base URL; Locust's --host overrides it.\n    host = {}",
                py_str(host)
            );
        }
        None => py.push_str("    # The app's base URL comes from Locust's --host.\n"),
    }
    py.push_str(
        "
    def send(self, name, method, path, headers, body, status):
        \"\"\"Sends one recorded request; an answer with another status is a failure.\"\"\"
        with self.client.request(
            method,
            path,
            headers=headers,
            data=body,
            name=name,
            allow_redirects=False,
            catch_response=True,
        ) as response:
            if response.status_code == status:
                response.success()
            else:
                response.failure(f\"status {response.status_code}, recorded {status}\")
",
    );
    for recorded in inbound {
        task(&mut py, recorded);
    }
    py
}

/// One `@task` method sending `recorded`'s request.
fn task(py: &mut String, recorded: &Recorded) {
    let exchange = &recorded.exchange;
    let request = &exchange.request;
    let file = recorded.path.file_name().map_or_else(
        || recorded.path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let name = format!("{} {}", request.method, request.path);
    let (headers, redacted) = resent_headers(&request.headers, &request.body);
    let _ = write!(
        py,
        "
    @task
    def request_{seq:06}(self):
        {doc}
",
        seq = exchange.seq,
        doc = py_str(&format!(
            "{file}: {name}, answered {}.",
            exchange.response.status
        )),
    );
    if !redacted.is_empty() {
        let _ = writeln!(
            py,
            "        # Left out, redacted when recorded: {}.",
            comment_text(&redacted.join(", "))
        );
    }
    let _ = write!(
        py,
        "        self.send(\n            {},\n            {},\n            {},\n            {{\n",
        py_str(&name),
        py_str(&request.method),
        py_str(&request.path),
    );
    for (header, value) in &headers {
        let _ = writeln!(py, "                {}: {},", py_str(header), py_str(value));
    }
    let _ = write!(
        py,
        "            }},\n            {},\n            {},\n        )\n",
        py_bytes(&request.body.to_bytes()),
        exchange.response.status,
    );
}

/// The headers of a recorded request worth sending again, repeated names
/// joined into one field, and the names left out because their value was
/// redacted. `Content-Encoding` follows the body: the recorded bytes are
/// sent, which are decoded unless replay could not undo the coding.
fn resent_headers(headers: &Headers, body: &Body) -> (Vec<(String, String)>, Vec<String>) {
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut redacted: Vec<String> = Vec::new();
    for (name, value) in headers.iter() {
        let lower = name.to_ascii_lowercase();
        if name.starts_with(':')
            || is_hop_by_hop(&lower)
            || matches!(
                lower.as_str(),
                "host" | "content-length" | "content-encoding"
            )
        {
            continue;
        }
        if contains_placeholder(value) {
            if !redacted.contains(&lower) {
                redacted.push(lower);
            }
            continue;
        }
        match kept.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, joined)) => {
                joined.push_str(if lower == "cookie" { "; " } else { ", " });
                joined.push_str(value);
            }
            None => kept.push((name.to_owned(), value.to_owned())),
        }
    }
    if let Some(coding) = body.wire_content_encoding() {
        kept.push(("content-encoding".to_owned(), coding.to_owned()));
    }
    (kept, redacted)
}

/// `text` as a Python string literal.
fn py_str(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('"');
    for c in text.chars() {
        match c {
            '\\' => literal.push_str("\\\\"),
            '"' => literal.push_str("\\\""),
            '\n' => literal.push_str("\\n"),
            '\r' => literal.push_str("\\r"),
            '\t' => literal.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let code = u32::from(c);
                let _ = if code <= 0xff {
                    write!(literal, "\\x{code:02x}")
                } else {
                    write!(literal, "\\u{code:04x}")
                };
            }
            c => literal.push(c),
        }
    }
    literal.push('"');
    literal
}

/// `bytes` as a Python bytes literal: printable ASCII as itself, the rest escaped.
fn py_bytes(bytes: &[u8]) -> String {
    let mut literal = String::with_capacity(bytes.len() + 3);
    literal.push_str("b\"");
    for &b in bytes {
        match b {
            b'\\' => literal.push_str("\\\\"),
            b'"' => literal.push_str("\\\""),
            b'\n' => literal.push_str("\\n"),
            b'\r' => literal.push_str("\\r"),
            b'\t' => literal.push_str("\\t"),
            0x20..=0x7e => literal.push(char::from(b)),
            _ => {
                let _ = write!(literal, "\\x{b:02x}");
            }
        }
    }
    literal.push('"');
    literal
}

/// `text` made safe for one comment line: control characters become `?`.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmsim_snapshot::fixtures;
    use serde_json::json;

    #[test]
    fn bytes_are_escaped_so_python_reads_back_the_recorded_bytes() {
        assert_eq!(
            py_bytes(b"{\"a\": \"\\\xc3\xa9\"}\r\n\x00"),
            r#"b"{\"a\": \"\\\xc3\xa9\"}\r\n\x00""#
        );
        assert_eq!(py_str("a\"\\\n\u{7}é"), r#""a\"\\\n\x07é""#);
    }

    #[test]
    fn connection_host_length_and_redacted_headers_are_not_resent() {
        let headers: Headers = [
            ("Host", "app.example"),
            ("Connection", "keep-alive"),
            ("Content-Length", "2"),
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer <redacted:0123abcd>"),
            ("Accept", "text/plain"),
            ("accept", "application/json"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("Content-Encoding", "gzip"),
            ("X-Trace", "<redacted:nothex!>"),
        ]
        .into_iter()
        .collect();
        // Stored decoded from gzip: the decoded bytes go out, without the coding.
        let body = Body::Empty {
            content_encoding: Some("gzip".to_owned()),
        };
        let (kept, redacted) = resent_headers(&headers, &body);
        assert_eq!(
            kept,
            [
                ("Content-Type", "application/json"),
                ("Accept", "text/plain, application/json"),
                ("Cookie", "a=1; b=2"),
                ("X-Trace", "<redacted:nothex!>"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(redacted, ["authorization"]);
    }

    #[test]
    fn a_recorded_request_becomes_one_task_sending_it_as_recorded() {
        let inbound = Recorded {
            path: PathBuf::from("exchanges/000002-generic-triage.json"),
            exchange: fixtures::exchange(json!({
                "seq": 2,
                "direction": "inbound",
                "request": {"method": "POST", "path": "/triage",
                            "headers": [["content-type", "application/json"]],
                            "body": {"kind": "text", "text": "{\"id\": \"T-1\"}"}},
                "response": {"status": 201, "headers": [], "body": {"kind": "empty"}},
            })),
        };
        let py = locustfile(
            Path::new("snap"),
            &[&inbound],
            Some("http://127.0.0.1:8080"),
        );
        assert!(
            py.contains("    host = \"http://127.0.0.1:8080\"\n"),
            "{py}"
        );
        assert!(
            py.contains(
                "    @task
    def request_000002(self):
        \"000002-generic-triage.json: POST /triage, answered 201.\"
        self.send(
            \"POST /triage\",
            \"POST\",
            \"/triage\",
            {
                \"content-type\": \"application/json\",
            },
            b\"{\\\"id\\\": \\\"T-1\\\"}\",
            201,
        )
"
            ),
            "{py}"
        );
    }
}
