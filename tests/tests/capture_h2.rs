//! HTTP/2 capture end to end: real clients (curl as the system ships it, httpx with
//! `http2=True`, the openai SDK over such an httpx client) talk to the fake provider through
//! an `nghttpx` front end that offers h2 by ALPN, under the provider's real host name, while
//! `llmsim-agent capture` records them. Each stream is one exchange file that says
//! `http_version: "2"`, with bodies byte-equal to what the provider received and sent, SSE
//! events complete and in order, and no key on disk (nor one sent in `x-api-key` or in the
//! `:path` query). Each snapshot curl and httpx made replays to the same client, offline,
//! with the same bytes over h2. gRPC calls to a real grpcio server behind the same front
//! end keep their trailers and replay to the same messages and status. Also, against an h2
//! server of the suite's own: 100 concurrent streams on one connection (h2load); and a
//! capture joined to a running h2 connection, a gzip answer, and an h2 connection that
//! turns malformed beside healthy ones.

mod capture_support;

use std::ffi::OsString;
use std::path::Path;

use std::time::Duration;

use capture_support::{
    Agent, Finished, StepClient, assert_bodies_as_exchanged, assert_keys_absent,
    assert_no_events_dropped, assert_paced_sse, exchanges, figure, models,
};

use llmsim_tests::{
    FakeProvider, FakeProviderConfig, GrpcServer, H2Front, H2Server, TEST_API_KEYS, TestCa,
    TestNetns, client_argv, client_script,
    flows::{REPLAY_API_KEY, replayd_command},
    on_path, privileged, requires, run_command,
};
use serde_json::Value;

/// Whether the test `feature` can run: root, and `programs` installed.
fn runnable(feature: &str, programs: &[&str]) -> bool {
    privileged(feature)
        && programs.iter().all(|p| {
            requires(
                on_path(p),
                feature,
                &format!("needs {p} (scripts/setup.sh installs it)"),
            )
        })
}

/// A provider behind an h2 front end, in a namespace of its own.
struct Setup {
    ca: TestCa,
    netns: TestNetns,
    provider: FakeProvider,
    _front: H2Front,
}

impl Setup {
    fn new() -> Self {
        Self::with(&FakeProviderConfig::default())
    }

    fn with(config: &FakeProviderConfig) -> Self {
        let ca = TestCa::new();
        let netns = TestNetns::new();
        let provider = FakeProvider::start_with(&netns, &ca, config);
        let front = H2Front::start(&netns, &ca);
        Setup {
            ca,
            netns,
            provider,
            _front: front,
        }
    }

    /// Captures `h2_client.py MODE ORIGIN`; the capture and the client's report.
    fn capture_client(&self, out: &Path, mode: &str) -> (Finished, Value) {
        capture_h2_client(&self.netns, &self.ca, out, mode)
    }
}

/// Captures `h2_client.py MODE ORIGIN` run in `netns` against the front end there; the
/// capture and the client's report.
fn capture_h2_client(netns: &TestNetns, ca: &TestCa, out: &Path, mode: &str) -> (Finished, Value) {
    let mut args = vec![OsString::from("--")];
    args.extend(netns.exec_prefix());
    args.extend(client_argv("h2_client.py"));
    args.extend([mode, &H2Front::origin()].map(OsString::from));
    let finished = Agent::start(out, ca, &args).finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());
    let report = finished
        .command_stdout()
        .iter()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no client report\n{}", finished.dump()));
    (finished, report)
}

/// Replays the snapshot in `dir` to `h2_client.py MODE ORIGIN` with `replayd --in DIR` in a
/// fresh offline namespace (no provider, no front end: only replayd answers); the client's
/// report.
fn replay_h2_client(dir: &Path, mode: &str) -> Value {
    let offline = TestNetns::offline();
    let mut argv = client_argv("h2_client.py");
    argv.extend([mode, &H2Front::origin()].map(OsString::from));
    let mut cmd = replayd_command(&offline, dir, argv);
    cmd.env(REPLAY_API_KEY.0, REPLAY_API_KEY.1)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(
        cmd,
        &format!("replay of h2_client.py {mode}"),
        REPLAY_TIMEOUT,
    );
    assert!(output.status.success(), "{output}");
    output
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no client report from the replay\n{output}"))
}

/// How long a replay of one client may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);

/// Every exchange is an HTTP/2 chat completion of the provider, whole, flagged nothing.
fn assert_h2_chat(recorded: &[Value], finished: &Finished) {
    for exchange in recorded {
        assert_eq!(exchange["http_version"], "2", "{exchange:#}");
        assert_eq!(exchange["provider"], "openai");
        assert_eq!(exchange["host"], "api.openai.com");
        assert_eq!(exchange["request"]["method"], "POST");
        assert_eq!(exchange["request"]["path"], "/v1/chat/completions");
        assert_eq!(exchange["response"]["status"], 200);
        assert!(
            exchange["incomplete"].is_null(),
            "{exchange:#}\n{}",
            finished.dump()
        );
    }
    assert_eq!(figure(&finished.summary, "exchanges_incomplete"), 0);
    assert_eq!(
        figure(&finished.summary, "http2_exchanges_written"),
        u64::try_from(recorded.len()).unwrap()
    );
    assert_no_events_dropped(finished);
}

/// The plain and the streamed exchange of a client report: bodies byte-equal to what the
/// client sent and received and to what the provider received and sent, the stream stored
/// as its events, in order, with receive offsets.
fn assert_plain_and_streamed(setup: &Setup, out: &Path, finished: &Finished, report: &Value) {
    let recorded = exchanges(out);
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    assert_h2_chat(&recorded, finished);
    let served = setup.provider.requests();
    assert_eq!(served.len(), 2);
    let results = report["results"].as_array().expect("results");
    for (i, exchange) in recorded.iter().enumerate() {
        let result = &results[i];
        assert_eq!(
            result["http_version"], "HTTP/2",
            "the client did not speak h2: {result}"
        );
        assert_bodies_as_exchanged(i, exchange, result, &served[i]);
        assert_eq!(exchange["streamed"], i == 1);
    }
    assert_paced_sse(&recorded[1]);
    assert_keys_absent(out);
}

#[test]
fn curl_over_h2_is_captured_plain_and_streamed() {
    if !runnable("HTTP/2 capture of curl", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, report) = setup.capture_client(out.path(), "curl");
    assert_plain_and_streamed(&setup, out.path(), &finished, &report);
    assert!(
        finished
            .stderr
            .iter()
            .any(|l| l.starts_with("llmsim-agent: HTTP/2: 2 connections, 2 exchanges written")),
        "{}",
        finished.dump()
    );
}

#[test]
fn httpx_with_http2_is_captured_plain_and_streamed() {
    if !runnable("HTTP/2 capture of httpx", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, report) = setup.capture_client(out.path(), "httpx");
    assert_plain_and_streamed(&setup, out.path(), &finished, &report);
    // Both requests went over one connection.
    assert_eq!(
        figure(&finished.summary["connections"], "http2_connections"),
        1
    );
}

#[test]
fn a_gzip_answer_over_h2_is_stored_decoded_with_its_encoding_noted() {
    if !runnable("HTTP/2 capture of a gzip answer", &["nghttpx"]) {
        return;
    }
    let setup = Setup::with(&FakeProviderConfig {
        gzip: true,
        ..FakeProviderConfig::default()
    });
    let out = tempfile::tempdir().expect("tempdir");
    // httpx asks for gzip; `received` is the body it decoded.
    let (finished, report) = setup.capture_client(out.path(), "httpx");
    let served = setup.provider.requests();
    assert_eq!(
        served[0].raw["response_gzip"], true,
        "the provider gzipped the plain answer"
    );
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    assert_h2_chat(&recorded, &finished);
    let body = &recorded[0]["response"]["body"];
    assert_eq!(body["content_encoding"], "gzip", "{body:#}");
    assert_eq!(
        models(&recorded)[0].response.body.to_bytes(),
        report["results"][0]["received"]
            .as_str()
            .unwrap()
            .as_bytes()
    );
    assert_eq!(
        models(&recorded)[0]
            .response
            .headers
            .get("content-encoding"),
        Some("gzip")
    );
}

#[test]
fn the_openai_sdk_over_an_h2_httpx_client_is_captured() {
    if !runnable("HTTP/2 capture of the openai SDK", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, report) = setup.capture_client(out.path(), "openai");
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    assert_h2_chat(&recorded, &finished);
    let served = setup.provider.requests();
    for (i, result) in report["results"]
        .as_array()
        .expect("results")
        .iter()
        .enumerate()
    {
        assert_eq!(result["http_version"], "HTTP/2", "{result}");
        let answer = result["received"].as_str().expect("answer");
        assert!(
            served[i]
                .answer
                .as_deref()
                .is_some_and(|a| answer.contains(a) || a.contains(answer)),
            "answer {i} {answer:?} is not the provider's"
        );
        let exchange = &models(&recorded)[i];
        assert_eq!(
            exchange.response.body.to_bytes(),
            served[i].response_body.as_bytes(),
            "response {i}"
        );
    }
    assert_keys_absent(out.path());
}

#[test]
fn a_hundred_concurrent_streams_on_one_connection_are_a_hundred_exchanges() {
    if !runnable("HTTP/2 capture of 100 concurrent streams", &["h2load"]) {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    // The h2 server answers every stream itself, at once: 100 streams in flight on one
    // connection, each answer naming its stream.
    let _server = H2Server::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"One of a hundred."}]}"#;
    let body_path = data.path().join("body.json");
    std::fs::write(&body_path, body).expect("write the request body");
    let authorization = format!("authorization: Bearer {}", TEST_API_KEYS[0].1);
    let url = format!("{}/v1/chat/completions", H2Server::origin());
    let mut args: Vec<OsString> = vec!["--any-host".into(), "--".into()];
    args.extend(netns.exec_prefix());
    args.extend(
        [
            "h2load",
            "--requests=100",
            "--clients=1",
            "--max-concurrent-streams=100",
            "--data",
            body_path.to_str().expect("UTF-8 path"),
            "--header",
            &authorization,
            "--header",
            "content-type: application/json",
            &url,
        ]
        .map(OsString::from),
    );
    let finished = Agent::start(out.path(), &ca, &args).finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert!(
        finished
            .command_stdout()
            .iter()
            .any(|l| l.contains("100 succeeded")),
        "{}",
        finished.dump()
    );
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 100, "{}", finished.dump());
    assert_eq!(figure(&finished.summary, "exchanges_incomplete"), 0);
    assert_eq!(figure(&finished.summary, "http2_exchanges_written"), 100);
    assert_eq!(
        figure(&finished.summary["connections"], "http2_connections"),
        1
    );
    assert_eq!(
        figure(&finished.summary, "events_dropped_total"),
        0,
        "{}",
        finished.dump()
    );
    // Each body intact, and the files in the order the streams started.
    let mut streams = Vec::new();
    for (exchange, model) in recorded.iter().zip(models(&recorded)) {
        assert_eq!(exchange["http_version"], "2");
        assert!(exchange["incomplete"].is_null(), "{exchange:#}");
        assert_eq!(model.request.path, "/v1/chat/completions");
        assert_eq!(model.request.body.to_bytes(), body.as_bytes());
        assert_eq!(model.response.status, 200);
        let answer = model.response.body.to_bytes();
        let stream = serde_json::from_slice::<Value>(&answer).expect("JSON answer")["stream"]
            .as_u64()
            .expect("stream id");
        // The server's answer, byte for byte.
        let expected = format!(
            r#"{{"stream":{stream},"request_bytes":{},"request":{}}}"#,
            body.len(),
            serde_json::to_string(body).expect("JSON string")
        );
        assert_eq!(String::from_utf8(answer).expect("UTF-8"), expected);
        streams.push(stream);
    }
    let in_order: Vec<u64> = (0..100).map(|i| 2 * i + 1).collect();
    assert_eq!(
        streams, in_order,
        "one exchange per stream, in stream order"
    );
    assert_keys_absent(out.path());
}

/// Starts `h2_client.py MODE`, which opens its connection and waits, then captures it with
/// `--pid` while it takes its step: the capture joins a connection already under way. The
/// host is among the fields such a capture may not know (`:authority` can refer to the
/// HPACK table), so every host is recorded. Returns the agent's result, checked to have
/// succeeded, and the client's report.
fn capture_joined(setup: &Setup, out: &Path, mode: &str) -> (Finished, Value) {
    let mut cmd = setup.netns.command("python3");
    cmd.arg(client_script("h2_client.py"))
        .args([mode, &H2Front::origin()]);
    let mut client = StepClient::start(cmd, &setup.ca);
    let agent = Agent::start(
        out,
        &setup.ca,
        &[
            "--pid".into(),
            client.pid.to_string().into(),
            "--any-host".into(),
        ],
    );
    let report = client.step("go");
    client.quit();
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    (finished, report)
}

#[test]
fn a_capture_joined_to_a_running_h2_connection_writes_only_what_it_can_know() {
    if !runnable("HTTP/2 capture --pid on a running connection", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    // The client makes its first request, which fills both HPACK tables, before the
    // capture starts; then two more on the same connection.
    let (finished, report) = capture_joined(&setup, out.path(), "join");

    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    let connections = &finished.summary["connections"];
    assert_eq!(
        figure(connections, "http2_connections"),
        1,
        "{}",
        finished.dump()
    );
    assert_eq!(figure(connections, "joined_connections"), 1);
    assert_eq!(figure(connections, "http2_withheld_exchanges"), 2);
    assert_eq!(figure(&finished.summary, "exchanges_incomplete"), 2);
    assert!(
        finished
            .stderr
            .iter()
            .any(|l| l.contains("2 with header fields left out (capture joined mid-connection)")),
        "{}",
        finished.dump()
    );

    let served = setup.provider.requests();
    assert_eq!(served.len(), 3);
    let results = report["results"].as_array().expect("results");
    for (i, (exchange, model)) in recorded.iter().zip(models(&recorded)).enumerate() {
        let (result, served) = (&results[i + 1], &served[i + 1]);
        assert_eq!(exchange["http_version"], "2");
        let why = exchange["incomplete"].as_str().expect("flagged incomplete");
        assert!(
            why.contains("refer to HPACK table entries from before the capture began"),
            "{why}"
        );
        // What does not depend on the table is all there: bodies, byte for byte.
        assert_eq!(model.request.method, "POST");
        assert_eq!(
            model.request.body.to_bytes(),
            result["sent"].as_str().unwrap().as_bytes()
        );
        assert_eq!(
            model.response.body.to_bytes(),
            result["received"].as_str().unwrap().as_bytes()
        );
        assert_eq!(model.response.status, 200);
        // No header is written that may be wrong: every field recorded is one the
        // provider received (or sent), or a redacted secret.
        assert!(!model.request.path.is_empty() || why.contains("request header field"));
        for (name, value) in model.request.headers.iter() {
            if value.starts_with("Bearer <redacted:") {
                continue;
            }
            let expected = match name {
                ":scheme" => Some("https"),
                ":authority" => served.host.as_deref(),
                _ => served.header(name),
            };
            assert_eq!(
                Some(value),
                expected,
                "request field {name} of exchange {i}"
            );
        }
        for (name, value) in model.response.headers.iter() {
            if let Some(sent) = served.response_header(name) {
                assert_eq!(value, sent, "response field {name} of exchange {i}");
            }
        }
    }
    assert_keys_absent(out.path());
}

#[test]
fn a_stream_under_way_when_the_capture_joins_is_counted_not_lost_silently() {
    if !runnable("HTTP/2 capture --pid joined during a stream", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    // A chat completion, then a streamed one the client has read the start of, before the
    // capture starts; the rest of that stream and one more completion after.
    let (finished, report) = capture_joined(&setup, out.path(), "join-streaming");

    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert!(
        results[1]["received"]
            .as_str()
            .unwrap()
            .ends_with("data: [DONE]\n\n"),
        "the client read the whole stream: {}",
        results[1]
    );
    // Only the completion made after the join is written...
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 1, "{}", finished.dump());
    assert_eq!(
        models(&recorded)[0].response.body.to_bytes(),
        results[2]["received"].as_str().unwrap().as_bytes()
    );
    // ...and the stream the capture joined in its middle is counted, in --json and on the
    // summary line.
    let connections = &finished.summary["connections"];
    assert_eq!(
        figure(connections, "joined_connections"),
        1,
        "{}",
        finished.dump()
    );
    assert_eq!(
        figure(connections, "http2_streams_before_join"),
        1,
        "{}",
        finished.dump()
    );
    assert!(
        finished
            .stderr
            .iter()
            .any(|l| l.starts_with("llmsim-agent: HTTP/2: ")
                && l.ends_with(", 1 streams passed over (begun before the capture joined)")),
        "{}",
        finished.dump()
    );
}

#[test]
fn a_malformed_h2_connection_is_counted_and_skipped_and_others_are_recorded() {
    if !runnable("HTTP/2 capture of a malformed connection", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, report) = setup.capture_client(out.path(), "malformed");
    let connections = &finished.summary["connections"];
    assert_eq!(
        figure(connections, "http2_connections"),
        3,
        "{}",
        finished.dump()
    );
    assert_eq!(figure(connections, "http2_malformed_connections"), 1);
    assert_eq!(figure(connections, "non_http_connections"), 1);
    let warnings: Vec<&String> = finished
        .stderr
        .iter()
        .filter(|l| l.contains("skipping a TLS connection"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning\n{}", finished.dump());
    assert!(
        warnings[0].contains("malformed HTTP/2 PING frame"),
        "{}",
        warnings[0]
    );
    // curl's two connections after it are recorded whole.
    assert_plain_and_streamed(&setup, out.path(), &finished, &report);
}

/// Bytes from the hex a client report holds.
fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The client got over replay what it got over the capture: the same bytes, over HTTP/2.
fn assert_replayed_the_same(captured: &Value, replayed: &Value) {
    let captured = captured["results"].as_array().expect("results");
    let replayed = replayed["results"].as_array().expect("replayed results");
    assert_eq!(replayed.len(), captured.len(), "{replayed:#?}");
    for (i, (then, now)) in captured.iter().zip(replayed).enumerate() {
        assert_eq!(
            now["http_version"], "HTTP/2",
            "replay {i} not over h2: {now}"
        );
        assert_eq!(now["sent"], then["sent"], "request {i}");
        let (then, now) = (
            then["received"].as_str().expect("received"),
            now["received"].as_str().expect("received"),
        );
        assert_eq!(now.as_bytes(), then.as_bytes(), "response {i}");
    }
}

#[test]
fn curl_over_h2_replays_what_it_captured_byte_for_byte() {
    if !runnable("HTTP/2 capture and replay of curl", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, captured) = setup.capture_client(out.path(), "curl");
    assert_plain_and_streamed(&setup, out.path(), &finished, &captured);
    let replayed = replay_h2_client(out.path(), "curl");
    assert_replayed_the_same(&captured, &replayed);
}

#[test]
fn httpx_with_http2_replays_what_it_captured_byte_for_byte() {
    if !runnable("HTTP/2 capture and replay of httpx", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, captured) = setup.capture_client(out.path(), "httpx");
    assert_plain_and_streamed(&setup, out.path(), &finished, &captured);
    let replayed = replay_h2_client(out.path(), "httpx");
    assert_replayed_the_same(&captured, &replayed);
}

#[test]
fn keys_sent_over_h2_in_headers_and_the_path_query_reach_no_file() {
    if !runnable("HTTP/2 capture redaction", &["nghttpx"]) {
        return;
    }
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, report) = setup.capture_client(out.path(), "secrets");
    assert_eq!(report["results"][0]["http_version"], "HTTP/2");
    // The key did go over the wire, all three ways.
    let served = setup.provider.requests();
    assert_eq!(served.len(), 1);
    let key = TEST_API_KEYS[0].1;
    assert_eq!(served[0].path, format!("/v1/chat/completions?key={key}"));
    assert_eq!(served[0].header("x-api-key"), Some(key));
    assert_eq!(
        served[0].header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 1, "{}", finished.dump());
    assert_eq!(recorded[0]["http_version"], "2");
    // Not a byte of any key in any file the capture wrote.
    let mut files = 0;
    let mut dirs = vec![out.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the snapshot dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).expect("read a snapshot file");
            files += 1;
            for (_, key) in TEST_API_KEYS {
                assert!(
                    !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                    "API key {key} reached {}",
                    path.display()
                );
            }
        }
    }
    assert!(files >= 1, "the capture wrote no file");
    // The fields are there, redacted.
    let model = &models(&recorded)[0];
    assert!(
        model
            .request
            .headers
            .get("authorization")
            .is_some_and(|v| v.starts_with("Bearer <redacted:")),
        "{:#}",
        recorded[0]
    );
    assert!(
        model
            .request
            .headers
            .get("x-api-key")
            .is_some_and(|v| v.starts_with("<redacted:")),
        "{:#}",
        recorded[0]
    );
    assert!(
        model
            .request
            .path
            .starts_with("/v1/chat/completions?key=<redacted"),
        "{}",
        model.request.path
    );
}

#[test]
fn grpc_calls_to_a_grpcio_server_keep_their_trailers_and_replay_the_same() {
    if !runnable("HTTP/2 capture of gRPC calls", &["nghttpx"]) {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _server = GrpcServer::start(&netns);
    let _front = H2Front::start_grpc(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, report) = capture_h2_client(&netns, &ca, out.path(), "grpc");
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    assert_eq!(figure(&finished.summary, "http2_exchanges_written"), 2);
    let results = report["results"].as_array().expect("results");
    // What grpcio answered: one message, then three, each call ending with status 0.
    let messages = |result: &Value| -> Vec<String> {
        result["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| String::from_utf8(unhex(m.as_str().expect("hex"))).expect("text"))
            .collect()
    };
    assert_eq!(messages(&results[0]), ["hello unary 0"]);
    assert_eq!(
        messages(&results[1]),
        ["hello stream 0", "hello stream 1", "hello stream 2"]
    );
    for ((exchange, model), result) in recorded.iter().zip(models(&recorded)).zip(results) {
        assert_eq!(result["http_version"], "HTTP/2");
        assert_eq!(result["status"], "200");
        assert_eq!(exchange["http_version"], "2");
        assert!(exchange["incomplete"].is_null(), "{exchange:#}");
        assert_eq!(
            model.request.path,
            format!("/helloworld.Greeter/{}", result["call"].as_str().unwrap())
        );
        assert_eq!(model.request.headers.get("te"), Some("trailers"));
        assert_eq!(model.response.status, 200);
        assert_eq!(
            model.response.headers.get("content-type"),
            Some("application/grpc")
        );
        assert_eq!(
            model.request.body.to_bytes(),
            unhex(result["sent"].as_str().unwrap())
        );
        assert_eq!(
            model.response.body.to_bytes(),
            unhex(result["received"].as_str().unwrap())
        );
        // The trailers the client got after the last message are stored, in order.
        let trailers: Vec<Value> = model
            .response
            .trailers
            .iter()
            .map(|(name, value)| serde_json::json!([name, value]))
            .collect();
        assert_eq!(Value::from(trailers), result["trailers"], "{exchange:#}");
        assert!(
            model
                .response
                .trailers
                .iter()
                .any(|t| t == ("grpc-status", "0")),
            "{exchange:#}"
        );
        assert!(
            model
                .response
                .trailers
                .iter()
                .any(|t| t == ("x-greeting", "done")),
            "{exchange:#}"
        );
    }
    // Replayed offline, the same client gets the same messages, bytes and trailers.
    let replayed = replay_h2_client(out.path(), "grpc");
    assert_eq!(replayed["results"], report["results"], "{replayed:#}");
}
