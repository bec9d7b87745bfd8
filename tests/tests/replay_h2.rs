//! End-to-end replay over HTTP/2: `replayd -- CMD` in an offline namespace serves
//! unmodified HTTP/2 clients (curl as Debian ships it, httpx with `http2=True`, the official
//! `openai` Python SDK on an HTTP/2 client, a raw `h2` client that sees every frame, a real
//! gRPC client) from hand-made snapshots: `h2` by ALPN on TLS and prior-knowledge h2c on plain
//! connections, the recorded bytes whichever version the exchange was recorded over, paced
//! events one DATA frame each, a hundred concurrent streams on one connection, trailers, and
//! GOAWAY when replayd stops.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use llmsim_snapshot::model::{Body, Exchange};
use llmsim_tests::{
    ChildGuard, CommandOutput, Lines, TestNetns, client_argv,
    flows::{REPLAY_API_KEY, replayd_command},
    privileged, replayd, run_command,
    snapshot::{self, openai_models},
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);
const OPENAI: &str = "api.openai.com";
const CHAT_URL: &str = "https://api.openai.com/v1/chat/completions";
/// Recorded offsets of the streamed answer's events, ms.
const EVENT_OFFSETS: [f64; 4] = [0.0, 150.0, 300.0, 450.0];

fn chat_request(prompt: &str, stream: bool) -> Value {
    let mut body =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]});
    if stream {
        body["stream"] = json!(true);
    }
    body
}

/// A plain chat completion recorded over HTTP/1.1, with the connection's own headers and a
/// length that no longer fits, as capture stores them.
fn plain_exchange(prompt: &str, answer: &str) -> Exchange {
    snapshot::exchange(json!({
        "provider": "openai", "host": OPENAI, "scheme": "https", "model": "gpt-4o-mini",
        "request": {"method": "POST", "path": "/v1/chat/completions",
                    "headers": [["content-type", "application/json"]],
                    "body": {"kind": "json", "json": chat_request(prompt, false)}},
        "response": {"status": 200,
                     "headers": [["Content-Type", "application/json"], ["x-request-id", "req_h1"],
                                 ["Connection", "keep-alive"], ["Keep-Alive", "timeout=5"],
                                 ["Transfer-Encoding", "chunked"], ["Content-Length", "9999"]],
                     "body": {"kind": "json", "json": {
                         "id": "chatcmpl-h2", "object": "chat.completion", "created": 1,
                         "model": "gpt-4o-mini",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": answer}}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}}}
    }))
}

/// A streamed chat completion recorded over HTTP/1.1, its events at [`EVENT_OFFSETS`].
fn streamed_exchange(prompt: &str) -> Exchange {
    let mut events: Vec<Value> = EVENT_OFFSETS[..EVENT_OFFSETS.len() - 1]
        .iter()
        .enumerate()
        .map(|(i, offset)| {
            let chunk = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                               "model": "gpt-4o-mini",
                               "choices": [{"index": 0, "delta": {"content": format!("w{i} ")},
                                            "finish_reason": null}]});
            json!({"offset_ms": offset, "data": chunk.to_string()})
        })
        .collect();
    events.push(json!({"offset_ms": EVENT_OFFSETS[EVENT_OFFSETS.len() - 1], "data": "[DONE]"}));
    snapshot::exchange(json!({
        "provider": "openai", "host": OPENAI, "scheme": "https", "model": "gpt-4o-mini",
        "streamed": true, "ttfb_ms": 0.0, "duration_ms": EVENT_OFFSETS[EVENT_OFFSETS.len() - 1],
        "request": {"method": "POST", "path": "/v1/chat/completions",
                    "headers": [["content-type", "application/json"]],
                    "body": {"kind": "json", "json": chat_request(prompt, true)}},
        "response": {"status": 200,
                     "headers": [["content-type", "text/event-stream"],
                                 ["transfer-encoding", "chunked"], ["connection", "keep-alive"]],
                     "body": {"kind": "sse", "events": events}}
    }))
}

/// The bytes replay sends for `exchange`'s answer.
fn answer_bytes(exchange: &Exchange) -> String {
    String::from_utf8(exchange.response.body.to_bytes()).expect("a text answer")
}

/// The SSE events of a streamed answer, as sent.
fn event_texts(exchange: &Exchange) -> Vec<String> {
    let Body::Sse { events, .. } = &exchange.response.body else {
        panic!("not a streamed answer");
    };
    events
        .iter()
        .map(|e| String::from_utf8(e.to_bytes()).expect("text"))
        .collect()
}

/// Runs `argv` under `replayd --in snapshot` in a fresh offline namespace.
fn replay(snapshot: &Path, argv: Vec<OsString>, what: &str) -> CommandOutput {
    let offline = TestNetns::offline();
    let mut cmd = replayd_command(&offline, snapshot, argv);
    cmd.env(REPLAY_API_KEY.0, REPLAY_API_KEY.1)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(cmd, what, TIMEOUT);
    assert!(output.status.success(), "{output}");
    output
}

fn sh(script: &str) -> Vec<OsString> {
    ["sh", "-ec", script].map(OsString::from).to_vec()
}

fn python(script: &str, extra: &[&str]) -> Vec<OsString> {
    let mut argv = client_argv(script);
    argv.extend(extra.iter().map(OsString::from));
    argv
}

/// Response headers as curl's `--dump-header` wrote them: lowercase names, in order.
fn dumped_headers(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("read the dumped headers")
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

const CONNECTION_HEADERS: &[&str] = &["connection", "keep-alive", "transfer-encoding", "upgrade"];

#[test]
fn curl_over_h2_gets_the_recorded_bytes_plain_and_streamed() {
    if !privileged("replay to curl over HTTP/2") {
        return;
    }
    let plain = plain_exchange("h2 plain", "hello over h2");
    let streamed = streamed_exchange("h2 stream");
    let snapshot = tempfile::tempdir().expect("tempdir");
    snapshot::write(snapshot.path(), [plain.clone(), streamed.clone()]);
    let out = tempfile::tempdir().expect("tempdir");
    let o = out.path().display();
    let script = format!(
        "curl --silent --show-error --http2 -H 'content-type: application/json' \
           --data-binary '{plain_req}' -o {o}/plain -D {o}/plain.h -w '%{{http_version}}\\n' {CHAT_URL}
         curl --silent --show-error --http2 -N -H 'content-type: application/json' \
           --data-binary '{stream_req}' -o {o}/stream -D {o}/stream.h \
           -w '%{{http_version}} %{{time_total}}\\n' {CHAT_URL}",
        plain_req = chat_request("h2 plain", false),
        stream_req = chat_request("h2 stream", true),
    );
    let output = replay(snapshot.path(), sh(&script), "replay to curl --http2");
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{output}");
    assert_eq!(lines[0], "2", "the plain answer came over HTTP/2\n{output}");
    let (version, total) = lines[1].split_once(' ').expect("version and time");
    assert_eq!(
        version, "2",
        "the streamed answer came over HTTP/2\n{output}"
    );

    let body = std::fs::read(out.path().join("plain")).expect("plain body");
    assert_eq!(body, answer_bytes(&plain).as_bytes(), "plain body bytes");
    let headers = dumped_headers(&out.path().join("plain.h"));
    assert_eq!(header(&headers, "x-request-id"), Some("req_h1"));
    assert_eq!(
        header(&headers, "content-length"),
        Some(body.len().to_string().as_str()),
        "the length is recomputed: {headers:?}"
    );
    for name in CONNECTION_HEADERS {
        assert_eq!(
            header(&headers, name),
            None,
            "{name} over HTTP/2: {headers:?}"
        );
    }

    let body = std::fs::read(out.path().join("stream")).expect("streamed body");
    assert_eq!(
        body,
        event_texts(&streamed).concat().as_bytes(),
        "every event, in order"
    );
    let headers = dumped_headers(&out.path().join("stream.h"));
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    for name in CONNECTION_HEADERS {
        assert_eq!(
            header(&headers, name),
            None,
            "{name} over HTTP/2: {headers:?}"
        );
    }
    let total: f64 = total.parse().expect("a time in seconds");
    let last = EVENT_OFFSETS[EVENT_OFFSETS.len() - 1] / 1e3;
    assert!(
        total >= last && total < last + 5.0,
        "the stream took {total} s; its events were recorded over {last} s"
    );
}

#[test]
fn each_event_arrives_in_its_own_data_frame_at_its_offset() {
    if !privileged("replay of paced events over HTTP/2") {
        return;
    }
    let streamed = streamed_exchange("h2 stream");
    let snapshot = tempfile::tempdir().expect("tempdir");
    snapshot::write(snapshot.path(), [streamed.clone()]);
    let body = chat_request("h2 stream", true).to_string();
    let output = replay(
        snapshot.path(),
        python("h2_frames.py", &["stream", CHAT_URL, &body]),
        "replay to a raw h2 client",
    );
    let report = output.json();
    assert_eq!(report["alpn"], "h2", "{output}");
    assert_eq!(report["status"], 200, "{output}");
    let frames = report["frames"].as_array().expect("frames");
    let texts: Vec<&str> = frames
        .iter()
        .map(|f| f["data"].as_str().expect("text"))
        .collect();
    assert_eq!(
        texts,
        event_texts(&streamed),
        "one DATA frame per event, in order"
    );
    for (frame, offset) in frames.iter().zip(EVENT_OFFSETS) {
        let at = frame["at_ms"].as_f64().expect("a time");
        assert!(
            at >= offset,
            "an event arrived at {at} ms, before its offset {offset} ms"
        );
    }
    let last = frames.last().expect("a frame")["at_ms"]
        .as_f64()
        .expect("a time");
    assert!(
        last < EVENT_OFFSETS[EVENT_OFFSETS.len() - 1] + 2000.0,
        "the last event came at {last} ms"
    );
}

#[test]
fn httpx_and_the_openai_sdk_over_h2_get_the_same_bytes_as_over_http11() {
    if !privileged("replay to httpx and openai-python over HTTP/2") {
        return;
    }
    let plain = plain_exchange("h2 plain", "hello over h2");
    let streamed = streamed_exchange("h2 stream");
    let snapshot = tempfile::tempdir().expect("tempdir");
    snapshot::write(snapshot.path(), [plain.clone(), streamed.clone()]);
    let output = replay(
        snapshot.path(),
        client_argv("httpx_h2.py"),
        "replay to httpx_h2.py",
    );
    let report = output.json();
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 8, "{output}");
    for result in results {
        let http2 = result["http2"].as_bool().expect("http2");
        let expected_version = if http2 { "HTTP/2" } else { "HTTP/1.1" };
        assert_eq!(result["http_version"], expected_version, "{result}");
        assert_eq!(result["status"], 200, "{result}");
        let expected = if result["stream"] == json!(true) {
            event_texts(&streamed).concat()
        } else {
            answer_bytes(&plain)
        };
        assert_eq!(result["body"], expected.as_str(), "{result}");
        if result["client"] == "openai" && result["stream"] == json!(false) {
            assert_eq!(result["text"], "hello over h2", "{result}");
        }
    }
}

#[test]
fn an_http11_recording_is_served_over_h2_and_an_h2_recording_over_http11() {
    if !privileged("cross-version replay") {
        return;
    }
    let from_h1 = plain_exchange("recorded over h1", "was h1");
    let mut from_h2 = plain_exchange("recorded over h2", "was h2");
    from_h2.http_version = llmsim_snapshot::model::HttpVersion::Http2;
    from_h2.response.headers = [
        ("content-type", "application/json"),
        ("content-length", "3"),
        ("x-request-id", "req_h2"),
    ]
    .into_iter()
    .collect();
    let snapshot = tempfile::tempdir().expect("tempdir");
    let files = snapshot::write(snapshot.path(), [from_h1.clone(), from_h2.clone()]);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(&files[1]).expect("read")).expect("JSON");
    assert_eq!(stored["http_version"], "2", "the file says HTTP/2");
    let out = tempfile::tempdir().expect("tempdir");
    let o = out.path().display();
    let script = format!(
        "curl --silent --show-error --http2 -H 'content-type: application/json' \
           --data-binary '{h1_req}' -o {o}/h1 -D {o}/h1.h -w '%{{http_version}}\\n' {CHAT_URL}
         curl --silent --show-error --http1.1 -H 'content-type: application/json' \
           --data-binary '{h2_req}' -o {o}/h2 -D {o}/h2.h -w '%{{http_version}}\\n' {CHAT_URL}",
        h1_req = chat_request("recorded over h1", false),
        h2_req = chat_request("recorded over h2", false),
    );
    let output = replay(snapshot.path(), sh(&script), "cross-version replay to curl");
    assert_eq!(
        output.stdout.lines().collect::<Vec<_>>(),
        ["2", "1.1"],
        "{output}"
    );

    let body = std::fs::read(out.path().join("h1")).expect("body");
    assert_eq!(body, answer_bytes(&from_h1).as_bytes());
    let headers = dumped_headers(&out.path().join("h1.h"));
    assert_eq!(
        header(&headers, "content-length"),
        Some(body.len().to_string().as_str())
    );
    for name in CONNECTION_HEADERS {
        assert_eq!(
            header(&headers, name),
            None,
            "{name} over HTTP/2: {headers:?}"
        );
    }

    let body = std::fs::read(out.path().join("h2")).expect("body");
    assert_eq!(body, answer_bytes(&from_h2).as_bytes());
    let headers = dumped_headers(&out.path().join("h2.h"));
    assert_eq!(
        header(&headers, "content-length"),
        Some(body.len().to_string().as_str()),
        "the recorded 3 is recomputed: {headers:?}"
    );
    assert_eq!(header(&headers, "x-request-id"), Some("req_h2"));
}

#[test]
fn a_hundred_concurrent_streams_on_one_connection_each_get_their_answer() {
    if !privileged("replay of 100 concurrent HTTP/2 streams") {
        return;
    }
    let exchanges: Vec<Exchange> = (0..100)
        .map(|i| plain_exchange(&format!("prompt {i}"), &format!("answer {i}")))
        .collect();
    let snapshot = tempfile::tempdir().expect("tempdir");
    snapshot::write(snapshot.path(), exchanges.clone());
    let bodies: Vec<Value> = (0..100)
        .map(|i| chat_request(&format!("prompt {i}"), false))
        .collect();
    let bodies_file = snapshot.path().join("bodies.json");
    std::fs::write(&bodies_file, serde_json::to_vec(&bodies).expect("JSON")).expect("write");
    let output = replay(
        snapshot.path(),
        python(
            "h2_frames.py",
            &[
                "concurrent",
                CHAT_URL,
                bodies_file.to_str().expect("a UTF-8 path"),
            ],
        ),
        "replay to 100 concurrent streams",
    );
    let report = output.json();
    assert_eq!(report["alpn"], "h2", "{output}");
    assert_eq!(report["streams_open"], 100, "all 100 open at once");
    let answers = report["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), 100);
    for (i, (answer, exchange)) in answers.iter().zip(&exchanges).enumerate() {
        assert_eq!(answer["status"], 200, "stream {i}: {answer}");
        assert_eq!(
            answer["body"],
            answer_bytes(exchange).as_str(),
            "stream {i}'s body"
        );
    }
    assert!(output.stderr.contains("served 100 requests"), "{output}");
}

/// A gRPC-framed message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// A gRPC call recorded over HTTP/2 on grpc.example.test: `messages` in the body, then
/// trailers with `status`, `message` and a custom field.
fn grpc_exchange(
    method: &str,
    request: &[u8],
    messages: &[&[u8]],
    (status, message): (&str, &str),
) -> Exchange {
    let mut exchange = snapshot::exchange(json!({
        "provider": "generic", "host": "grpc.example.test", "scheme": "https",
        "http_version": "2",
        "request": {"method": "POST", "path": format!("/llmsim.test.Echo/{method}"),
                    "headers": [["content-type", "application/grpc"], ["te", "trailers"]],
                    "body": {"kind": "empty"}},
        "response": {"status": 200,
                     "headers": [["content-type", "application/grpc"]],
                     "body": {"kind": "empty"},
                     "trailers": [["grpc-status", status], ["grpc-message", message],
                                  ["llmsim-method", method]]}
    }));
    exchange.request.body = Body::Base64 {
        content_encoding: None,
        base64: grpc_frame(request),
    };
    exchange.response.body = Body::Base64 {
        content_encoding: None,
        base64: messages.iter().flat_map(|m| grpc_frame(m)).collect(),
    };
    exchange
}

#[test]
fn a_grpc_client_gets_the_recorded_messages_and_status_from_the_trailers() {
    if !privileged("replay to a gRPC client") {
        return;
    }
    let request = b"\x0a\x04ping";
    let snapshot = tempfile::tempdir().expect("tempdir");
    snapshot::write(
        snapshot.path(),
        [
            grpc_exchange("Say", request, &[b"\x0a\x04pong"], ("0", "")),
            grpc_exchange(
                "Count",
                request,
                &[b"\x08\x01", b"\x08\x02", b"\x08\x03"],
                ("8", "quota used up"),
            ),
        ],
    );
    let hex = "0a0470696e67";
    let output = replay(
        snapshot.path(),
        python("grpc_h2.py", &["grpc.example.test:443", hex]),
        "replay to a gRPC client",
    );
    let report = output.json();
    assert_eq!(
        report["unary"],
        json!({"messages": ["0a04706f6e67"], "code": "OK", "details": "",
               "trailing": [["llmsim-method", "Say"]]}),
        "{output}"
    );
    assert_eq!(
        report["stream"],
        json!({"messages": ["0801", "0802", "0803"], "code": "RESOURCE_EXHAUSTED",
               "details": "quota used up", "trailing": [["llmsim-method", "Count"]]}),
        "{output}"
    );
}

#[test]
fn curl_with_prior_knowledge_gets_h2c_on_a_plain_connection() {
    if !privileged("replay over h2c") {
        return;
    }
    let (snapshot, answer) = openai_models();
    let output = replay(
        snapshot.path(),
        [
            "curl",
            "--silent",
            "--show-error",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            "http://api.openai.com/v1/models",
        ]
        .map(OsString::from)
        .to_vec(),
        "replay to curl --http2-prior-knowledge",
    );
    let (body, version) = output.stdout.rsplit_once('\n').expect("body and version");
    assert_eq!(version, "2", "{output}");
    assert_eq!(body, answer.to_string(), "{output}");
}

#[test]
fn stopping_replayd_sends_goaway_and_the_stream_under_way_finishes() {
    let streamed = streamed_exchange("h2 stream");
    let snapshot = tempfile::tempdir().expect("tempdir");
    snapshot::write(snapshot.path(), [streamed.clone()]);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(replayd());
    cmd.args(["--listen", "127.0.0.1:0", "--in"])
        .arg(snapshot.path())
        .arg("--ca-dir")
        .arg(ca_dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut replayd = ChildGuard::spawn(&mut cmd, "replayd --listen");
    let mut stderr = Lines::new(
        replayd.child_mut().stderr.take().expect("stderr is piped"),
        "replayd --listen",
    );
    let line = stderr.wait_for(
        |l| l.starts_with("replayd: listening on "),
        TIMEOUT,
        String::new,
    );
    let addr = line.trim_start_matches("replayd: listening on ");

    let argv = python(
        "h2_frames.py",
        &[
            "goaway",
            &format!("http://{addr}/v1/chat/completions"),
            &chat_request("h2 stream", true).to_string(),
        ],
    );
    let mut client_cmd = Command::new(&argv[0]);
    client_cmd
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut client = ChildGuard::spawn(&mut client_cmd, "h2_frames.py goaway");
    let mut stdout = Lines::new(
        client.child_mut().stdout.take().expect("stdout is piped"),
        "h2_frames.py goaway",
    );
    stdout.wait_for(|l| l.starts_with("{\"first\""), TIMEOUT, String::new);
    replayd.signal("TERM");
    let last = stdout.wait_for(|l| l.starts_with("{\"goaways\""), TIMEOUT, String::new);
    assert!(client.wait_timeout(TIMEOUT).success());
    let report: Value = serde_json::from_str(&last).expect("JSON");
    let goaways = report["goaways"].as_array().expect("goaways");
    assert!(!goaways.is_empty(), "no GOAWAY: {report}");
    assert!(
        goaways.iter().all(|g| g[0] == 0),
        "every GOAWAY says NO_ERROR: {report}"
    );
    assert_eq!(
        goaways.last(),
        Some(&json!([0, 1])),
        "the last GOAWAY keeps the stream under way: {report}"
    );
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["ended"], true, "the stream ended cleanly: {report}");
    let texts: Vec<&str> = report["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["data"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, event_texts(&streamed), "every event arrived");
    stderr.wait_for(
        |l| l.starts_with("replayd: wall time saved"),
        TIMEOUT,
        String::new,
    );
    assert!(replayd.wait_timeout(TIMEOUT).success());
}
