//! Fault injection and rate limits in `replayd --listen`, as apps see them: the official
//! `openai` Python SDK's own retries recover from a 30% rate of 429s (the retries counted
//! through the metrics), a stream cut surfaces as the SDK's connection error, and the
//! Anthropic SDK raises `OverloadedError` for a 529. Then every fault kind and a simulated
//! rate limit, byte for byte on the wire, and the same seed giving the same faults. Needs
//! no root.

mod load_support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use llmsim_tests::{run_command, snapshot::write_exchanges};
use load_support::{
    OPENAI_MODEL, Replayd, TIMEOUT, chat_answer, chat_request, chat_stream, chunk_data,
    client_command, dechunk_whole, exchange_bytes, message_answer, message_request, post_bytes,
    sample, split_head, stream_arrivals,
};
use serde_json::{Value, json};

/// A snapshot with a plain and a streamed chat completion and an Anthropic message.
fn snapshot() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_exchanges(
        dir.path(),
        [
            chat_answer("Say hi", "Hi!"),
            chat_stream(
                "Stream hi",
                &["Hel", "lo", " there"],
                &[10.0, 20.0, 30.0],
                3,
            ),
            message_answer("Say hi", "Hello"),
        ],
    );
    dir
}

fn run_client(args: &[&str], replay: &Replayd) -> Value {
    let output = run_command(
        client_command("load_faults.py", args, replay),
        &format!("load_faults.py {args:?}"),
        TIMEOUT,
    );
    output.assert_success();
    output.json()
}

#[test]
fn the_openai_sdk_retries_through_a_30_percent_rate_of_429s() {
    let snapshot = snapshot();
    let replay = Replayd::start(
        snapshot.path(),
        &[
            "--fault",
            "kind=429,rate=0.3,provider=openai",
            "--seed",
            "7",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let result = run_client(&["retries", "20"], &replay);
    assert_eq!(result["answers"], json!(vec!["Hi!"; 20]), "{result}");
    let scrape = replay.scrape();
    let faults = sample(&scrape, "llmsim_replay_faults_total{kind=\"429\"}");
    let labels = format!("provider=\"openai\",model=\"{OPENAI_MODEL}\"");
    let retried = sample(
        &scrape,
        &format!("llmsim_replay_requests_total{{{labels},outcome=\"fault\"}}"),
    );
    let served = sample(
        &scrape,
        &format!("llmsim_replay_requests_total{{{labels},outcome=\"served\"}}"),
    );
    assert!(faults >= 3.0, "a 30% rate over 20+ requests: {scrape}");
    assert!((retried - faults).abs() < f64::EPSILON, "{scrape}");
    assert!((served - 20.0).abs() < f64::EPSILON, "{scrape}");
    let (code, report) = replay.stop();
    let text = report.join("\n");
    assert!(
        report
            .iter()
            .any(|l| *l == format!("replayd: injected {faults} faults: 429 {faults}")),
        "{text}"
    );
    assert!(
        report
            .iter()
            .any(|l| l == "replayd: served 20 requests (19 repeats), 0 misses"),
        "{text}"
    );
    assert_eq!(code, Some(0), "injected faults do not fail the run: {text}");
}

#[test]
fn a_stream_cut_surfaces_as_the_sdk_error() {
    let snapshot = snapshot();
    let replay = Replayd::start(
        snapshot.path(),
        &["--fault", "kind=cut,every=1,after_events=2"],
    );
    let result = run_client(&["cut"], &replay);
    assert_eq!(result["chunks"], json!(["Hel", "lo"]), "{result}");
    assert_eq!(result["error"], "APIConnectionError", "{result}");
    let (code, report) = replay.stop();
    let text = report.join("\n");
    assert!(
        report
            .iter()
            .any(|l| l == "replayd: injected 1 faults: cut 1"),
        "{text}"
    );
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn the_anthropic_sdk_sees_a_529_as_overloaded_error() {
    let snapshot = snapshot();
    let replay = Replayd::start(
        snapshot.path(),
        &["--fault", "kind=529,every=1,provider=anthropic"],
    );
    let result = run_client(&["overloaded"], &replay);
    assert_eq!(result["error"], "OverloadedError", "{result}");
    assert_eq!(result["status"], 529, "{result}");
    assert_eq!(
        result["body"],
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        "{result}"
    );
    let (code, report) = replay.stop();
    assert!(
        report
            .iter()
            .any(|l| l == "replayd: injected 1 faults: 529 1"),
        "{report:?}"
    );
    assert_eq!(code, Some(0), "{report:?}");
}

/// The SSE bytes replay sends for a recorded chunk.
fn event(word: &str) -> String {
    format!("data: {}\n\n", chunk_data(word))
}

/// The answer to one request under `args`, with replayd stopped after it.
fn answer_under(args: &[&str], request: &Value, path: &str) -> (String, Vec<u8>) {
    let snapshot = snapshot();
    let replay = Replayd::start(snapshot.path(), args);
    let answer = exchange_bytes(replay.addr, &post_bytes(replay.addr, path, request));
    replay.stop();
    if answer.is_empty() {
        return (String::new(), Vec::new());
    }
    split_head(&answer)
}

fn header_lines(head: &str) -> Vec<String> {
    head.lines().skip(1).map(str::to_ascii_lowercase).collect()
}

#[test]
fn every_fault_reaches_the_app_as_the_provider_sends_it() {
    let plain = chat_request("Say hi", false);
    let streamed = chat_request("Stream hi", true);
    let chat = "/v1/chat/completions";

    // 429: the recorded limits with nothing remaining, retry-after, OpenAI's body.
    let (head, body) = answer_under(&["--fault", "kind=429,every=1"], &plain, chat);
    assert!(
        head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{head}"
    );
    let headers = header_lines(&head);
    for line in [
        "x-ratelimit-limit-requests: 500",
        "x-ratelimit-remaining-requests: 0",
        "x-ratelimit-reset-requests: 120ms",
        "retry-after: 1",
        "x-llmsim-fault: 429",
    ] {
        assert!(headers.iter().any(|h| h == line), "no {line} in {head}");
    }
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"error":{"message":"Rate limit reached for requests per minute. Please try again later.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
    );

    // 503: OpenAI's server error.
    let (head, body) = answer_under(&["--fault", "kind=503,every=1"], &plain, chat);
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#
    );

    // 529 to Anthropic: overloaded_error.
    let (head, body) = answer_under(
        &["--fault", "kind=529,every=1"],
        &message_request("Say hi"),
        "/v1/messages",
    );
    assert!(head.starts_with("HTTP/1.1 529 "), "{head}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
    );

    // A reset: the connection closes with no answer at all.
    let (head, body) = answer_under(&["--fault", "kind=reset,every=1"], &plain, chat);
    assert_eq!((head.as_str(), body.len()), ("", 0));

    // An in-stream error after one event: OpenAI's error chunk, then the stream's end.
    let (head, body) = answer_under(
        &["--fault", "kind=stream-error,every=1,after_events=1"],
        &streamed,
        chat,
    );
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (payload, whole) = dechunk_whole(&body);
    assert!(whole, "the stream ends normally after the error event");
    let error = r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#;
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        format!("{}data: {error}\n\n", event("Hel"))
    );

    // A cut after two events: those two, then the connection closes mid-body.
    let (head, body) = answer_under(
        &["--fault", "kind=cut,every=1,after_events=2"],
        &streamed,
        chat,
    );
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (payload, whole) = dechunk_whole(&body);
    assert!(!whole, "no last chunk after a cut");
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        format!("{}{}", event("Hel"), event("lo"))
    );
}

#[test]
fn a_stall_sends_the_head_then_nothing() {
    let snapshot = snapshot();
    let replay = Replayd::start(snapshot.path(), &["--fault", "kind=stall,every=1"]);
    let mut stream = TcpStream::connect(replay.addr).expect("connect");
    stream
        .write_all(&post_bytes(
            replay.addr,
            "/v1/chat/completions",
            &chat_request("Stream hi", true),
        ))
        .expect("write");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the head is in and then nothing comes for 500 ms.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "the connection closed: {:?}",
                String::from_utf8_lossy(&answer)
            ),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "no response head");
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    let (head, body) = split_head(&answer);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        header_lines(&head)
            .iter()
            .any(|h| h == "content-type: text/event-stream"),
        "{head}"
    );
    assert!(body.is_empty(), "nothing after the head: {body:?}");
    drop(stream);
    let (code, report) = replay.stop();
    assert!(
        report
            .iter()
            .any(|l| l == "replayd: injected 1 faults: stall 1"),
        "{report:?}"
    );
    assert_eq!(code, Some(0));
}

#[test]
fn a_slow_first_token_delays_the_whole_stream() {
    let snapshot = snapshot();
    let replay = Replayd::start(
        snapshot.path(),
        &["--fault", "kind=slow-first-token,every=1,delay_ms=300"],
    );
    let request = post_bytes(
        replay.addr,
        "/v1/chat/completions",
        &chat_request("Stream hi", true),
    );
    let arrivals = stream_arrivals(replay.addr, &request);
    let words: Vec<&str> = arrivals.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(words[..3], [event("Hel"), event("lo"), event(" there")]);
    for ((at, _), recorded_ms) in arrivals.iter().zip([10.0, 20.0, 30.0]) {
        assert!(
            at.as_secs_f64() * 1e3 >= 300.0 + recorded_ms,
            "an event recorded at {recorded_ms} ms came at {at:?}"
        );
    }
    replay.stop();
}

#[test]
fn a_simulated_rate_limit_answers_429_as_openai_does() {
    let snapshot = snapshot();
    let replay = Replayd::start(snapshot.path(), &["--rate-limit", "openai=2"]);
    let request = post_bytes(
        replay.addr,
        "/v1/chat/completions",
        &chat_request("Say hi", false),
    );
    for _ in 0..2 {
        let (head, _) = split_head(&exchange_bytes(replay.addr, &request));
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    }
    let (head, body) = split_head(&exchange_bytes(replay.addr, &request));
    assert!(
        head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{head}"
    );
    let headers = header_lines(&head);
    for line in [
        "x-ratelimit-limit-requests: 2",
        "x-ratelimit-remaining-requests: 0",
        "x-llmsim-fault: rate-limit",
    ] {
        assert!(headers.iter().any(|h| h == line), "no {line} in {head}");
    }
    // One request comes back every 30 s.
    let retry_after: u64 = headers
        .iter()
        .find_map(|h| h.strip_prefix("retry-after: "))
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((29..=30).contains(&retry_after), "{head}");
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let (code, report) = replay.stop();
    assert!(
        report
            .iter()
            .any(|l| l == "replayd: rate-limited 1 requests (429)"),
        "{report:?}"
    );
    assert!(
        report
            .iter()
            .any(|l| l == "replayd: served 2 requests (1 repeats), 0 misses"),
        "{report:?}"
    );
    assert_eq!(code, Some(0));
}

/// The statuses of 30 requests in a row under a 50% rate of 503s with `seed`.
fn statuses(seed: &str) -> Vec<String> {
    let snapshot = snapshot();
    let replay = Replayd::start(
        snapshot.path(),
        &["--fault", "kind=503,rate=0.5", "--seed", seed],
    );
    let request = post_bytes(
        replay.addr,
        "/v1/chat/completions",
        &chat_request("Say hi", false),
    );
    let statuses = (0..30)
        .map(|_| {
            let (head, _) = split_head(&exchange_bytes(replay.addr, &request));
            head.split(' ').nth(1).unwrap_or_default().to_owned()
        })
        .collect();
    replay.stop();
    statuses
}

#[test]
fn the_same_seed_gives_the_same_faults() {
    let first = statuses("3");
    assert_eq!(first, statuses("3"));
    assert_ne!(first, statuses("4"));
    let faults = first.iter().filter(|s| *s == "503").count();
    assert!((5..=25).contains(&faults), "{first:?}");
}
