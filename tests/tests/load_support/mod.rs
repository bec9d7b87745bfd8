//! What the load-test tests (`replay_faults`, `replay_metrics`, `replay_latency`) share: a
//! recording of `OpenAI` chat completions (plain and streamed) and an Anthropic message,
//! as the official SDKs send them, written by hand; a `replayd --listen` with extra flags,
//! its metrics endpoint, and its end-of-run report; a plain HTTP/1.1 client that reads an
//! answer's bytes and when each server-sent event arrived; a scrape of the metrics.

#![allow(
    dead_code,
    reason = "each test file uses its own part of the shared support"
)]

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llmsim_tests::{ChildGuard, Lines, TestCa, configure_client_env, replayd};
use serde_json::{Value, json};

/// How long a step may take.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The model of the `OpenAI` recordings.
pub const OPENAI_MODEL: &str = "gpt-4o-mini";
/// The model of the Anthropic recording.
pub const ANTHROPIC_MODEL: &str = "claude-3-5-haiku-latest";

/// The chat request the `OpenAI` SDK sends for `prompt`.
pub fn chat_request(prompt: &str, stream: bool) -> Value {
    let mut body =
        json!({"model": OPENAI_MODEL, "messages": [{"role": "user", "content": prompt}]});
    if stream {
        body["stream"] = json!(true);
    }
    body
}

/// One exchange file's JSON, recorded from `host`.
pub fn exchange(host: &str, path: &str, request: &Value, model: &str, response: &Value) -> Value {
    let streamed = response["body"]["kind"] == "sse";
    json!({
        "provider": llmsim_snapshot::provider::Provider::from_host(host),
        "host": host,
        "scheme": "https",
        "process": {"pid": 7, "comm": "python3", "exe": null},
        "started_at": "2026-07-01T09:00:00Z",
        "ttfb_ms": 5.0,
        "duration_ms": 5.0,
        "streamed": streamed,
        "model": model,
        "request": {
            "method": "POST",
            "path": path,
            "headers": [["content-type", "application/json"]],
            "body": {"kind": "json", "json": request},
        },
        "response": response,
    })
}

/// A plain chat completion answering `text`, with `OpenAI`'s rate-limit headers.
pub fn chat_answer(prompt: &str, text: &str) -> Value {
    exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &chat_request(prompt, false),
        OPENAI_MODEL,
        &json!({
            "status": 200,
            "headers": [
                ["content-type", "application/json"],
                ["x-ratelimit-limit-requests", "500"],
                ["x-ratelimit-remaining-requests", "499"],
                ["x-ratelimit-reset-requests", "120ms"],
            ],
            "body": {"kind": "json", "json": {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": OPENAI_MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}},
        }),
    )
}

/// The `data` of a streamed chat chunk carrying `content`.
pub fn chunk_data(content: &str) -> String {
    json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": OPENAI_MODEL,
           "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    .to_string()
}

/// A streamed chat completion for `prompt`: one event per word of `words` at `offsets_ms`,
/// then a usage chunk reporting `output_tokens` and `[DONE]` at the last offset.
pub fn chat_stream(prompt: &str, words: &[&str], offsets_ms: &[f64], output_tokens: u64) -> Value {
    let last = offsets_ms.last().copied().unwrap_or(0.0);
    let mut events: Vec<Value> = words
        .iter()
        .zip(offsets_ms)
        .map(|(word, offset)| json!({"offset_ms": offset, "data": chunk_data(word)}))
        .collect();
    let usage = json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1,
        "model": OPENAI_MODEL, "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": output_tokens,
                  "total_tokens": 9 + output_tokens}});
    events.push(json!({"offset_ms": last, "data": usage.to_string()}));
    events.push(json!({"offset_ms": last, "data": "[DONE]"}));
    let mut file = exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &chat_request(prompt, true),
        OPENAI_MODEL,
        &json!({
            "status": 200,
            "headers": [["content-type", "text/event-stream"]],
            "body": {"kind": "sse", "events": events},
        }),
    );
    file["ttfb_ms"] = json!(offsets_ms.first().copied().unwrap_or(0.0));
    file["duration_ms"] = json!(last);
    file
}

/// The Anthropic message request the SDK sends for `prompt`.
pub fn message_request(prompt: &str) -> Value {
    json!({"model": ANTHROPIC_MODEL, "max_tokens": 64,
           "messages": [{"role": "user", "content": prompt}]})
}

/// A recorded Anthropic message answering `text`.
pub fn message_answer(prompt: &str, text: &str) -> Value {
    exchange(
        "api.anthropic.com",
        "/v1/messages",
        &message_request(prompt),
        ANTHROPIC_MODEL,
        &json!({
            "status": 200,
            "headers": [["content-type", "application/json"]],
            "body": {"kind": "json", "json": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "stop_sequence": null, "usage": {"input_tokens": 8, "output_tokens": 2}}},
        }),
    )
}

/// A running `replayd --listen`, its metrics address (with `--metrics`) and its stderr.
pub struct Replayd {
    child: ChildGuard,
    stderr: Lines,
    _ca_dir: tempfile::TempDir,
    /// The CA the clients are given (they speak plain HTTP, but the SDKs load a CA file).
    ca: TestCa,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its metrics are served, with `--metrics`.
    pub metrics: Option<SocketAddr>,
}

impl Replayd {
    /// Starts `replayd --listen 127.0.0.1:0 --in SNAPSHOT` with `args`.
    pub fn start(snapshot: &Path, args: &[&str]) -> Self {
        let ca_dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(replayd());
        cmd.args(["--listen", "127.0.0.1:0", "--in"])
            .arg(snapshot)
            .arg("--ca-dir")
            .arg(ca_dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd, "replayd --listen");
        let stderr = child.child_mut().stderr.take().expect("stderr is piped");
        let mut stderr = Lines::new(stderr, "replayd --listen");
        let line = stderr.wait_for(
            |l| l.starts_with("replayd: listening on "),
            TIMEOUT,
            String::new,
        );
        let addr = line
            .trim_start_matches("replayd: listening on ")
            .parse()
            .expect("the listening address");
        let metrics = stderr
            .seen()
            .iter()
            .find_map(|l| l.strip_prefix("replayd: metrics on http://"))
            .map(|rest| {
                rest.trim_end_matches("/metrics")
                    .parse()
                    .expect("the metrics address")
            });
        Replayd {
            child,
            stderr,
            _ca_dir: ca_dir,
            ca: TestCa::new(),
            addr,
            metrics,
        }
    }

    /// The base URL of the listener.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops replayd with SIGTERM; returns its exit code and its report lines.
    pub fn stop(mut self) -> (Option<i32>, Vec<String>) {
        self.child.signal("TERM");
        self.stderr.wait_for(
            |l| l.starts_with("replayd: wall time saved"),
            TIMEOUT,
            String::new,
        );
        let status = self.child.wait_timeout(TIMEOUT);
        let lines = self.stderr.seen().to_vec();
        (status.code(), lines)
    }

    /// The metrics text, scraped now.
    pub fn scrape(&self) -> String {
        let addr = self.metrics.expect("replayd was started with --metrics");
        let (head, body) = http_get(addr, "/metrics");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        String::from_utf8(body).expect("metrics are text")
    }
}

/// The value of the sample `name` (with its labels, as written) in a scrape; 0 when absent.
pub fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a sample value"))
}

/// A command running the client `script` in tests/clients with `args`, pointed at `replay`
/// through the SDKs' base-URL variables.
pub fn client_command(script: &str, extra: &[&str], replay: &Replayd) -> Command {
    let argv: Vec<OsString> = llmsim_tests::client_argv(script);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).args(extra);
    configure_client_env(&mut cmd, &replay.ca);
    cmd.env("OPENAI_BASE_URL", format!("{}/v1", replay.origin()))
        .env("ANTHROPIC_BASE_URL", replay.origin());
    cmd
}

/// A plain HTTP/1.1 GET; the head and the body as sent (no chunked decoding).
pub fn http_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let answer = exchange_bytes(addr, request.as_bytes());
    split_head(&answer)
}

/// Writes `request` on a fresh connection and reads until the server closes it.
pub fn exchange_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(request).expect("write the request");
    let mut answer = Vec::new();
    // A cut connection may end in a reset: what was read so far is the answer.
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// `(head, body)` of an HTTP/1.1 answer.
pub fn split_head(answer: &[u8]) -> (String, Vec<u8>) {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(answer)));
    (
        String::from_utf8_lossy(&answer[..end]).into_owned(),
        answer[end + 4..].to_vec(),
    )
}

/// A POST of `body` (JSON) to `path`, as bytes.
pub fn post_bytes(addr: SocketAddr, path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends a streamed request and returns, for each server-sent event, its bytes and when
/// it arrived after the request was written.
pub fn stream_arrivals(addr: SocketAddr, request: &[u8]) -> Vec<(Duration, String)> {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let sent = Instant::now();
    stream.write_all(request).expect("write the request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut arrivals = Vec::new();
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        let at = sent.elapsed();
        answer.extend_from_slice(&buf[..n]);
        let events = answer.windows(2).filter(|w| w == b"\n\n").count();
        arrivals.resize(events, at);
    }
    let (_, body) = split_head(&answer);
    let text = String::from_utf8_lossy(&dechunk(&body)).into_owned();
    let events: Vec<String> = text
        .split_inclusive("\n\n")
        .filter(|e| e.ends_with("\n\n"))
        .map(str::to_owned)
        .collect();
    arrivals.into_iter().zip(events).collect()
}

/// The payload of a chunked body, and whether its last chunk (`0\r\n\r\n`) came.
pub fn dechunk_whole(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&body[..line_end])
                .expect("a chunk size")
                .trim(),
            16,
        )
        .expect("a hex chunk size");
        body = &body[line_end + 2..];
        if size == 0 {
            return (out, true);
        }
        if body.len() < size + 2 {
            out.extend_from_slice(&body[..size.min(body.len())]);
            return (out, false);
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The payload of a chunked body.
pub fn dechunk(body: &[u8]) -> Vec<u8> {
    dechunk_whole(body).0
}
