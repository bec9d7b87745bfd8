//! Plain-HTTP capture of local model servers: `--host localhost:11434` selects that
//! destination's plain connections, whose plaintext comes from the socket system calls. The
//! official `openai` SDK (`base_url` `http://localhost:11434/v1`, plain and streamed) and the
//! official `ollama` client (`/api/chat` streamed as NDJSON, `/api/generate` whole) talk to the
//! fake provider serving plain HTTP on `127.0.0.1:11434` inside a test network namespace. Every
//! body is stored so that it writes back to the bytes that went over the wire, streams keep
//! every event and line in order with its offset, usage is read from both formats, and no key
//! reaches the snapshot; bytes moved by `sendmsg`/`recvmsg` and `writev`/`readv` arrive whole.
//! A plain connection to an unselected port, and a TLS connection to a selected port, write
//! nothing of their own.

mod capture_support;

use std::{ffi::OsString, path::Path};

use capture_support::{Agent, Finished, assert_paced_sse, exchanges, figure};
use llmsim_tests::{
    FakeProvider, FakeProviderConfig, TEST_API_KEYS, TestCa, TestNetns, clients_argv, privileged,
};
use serde_json::Value;

/// Where the fake provider serves plain HTTP, as Ollama does.
const LOCAL_SERVER: &str = "127.0.0.1:11434";

/// `llmsim-agent capture FLAGS -- <the scripts one after the other>` inside `netns`, with the
/// SDKs pointed at `base` (an `http://` origin).
fn capture(
    netns: &TestNetns,
    ca: &TestCa,
    out: &Path,
    flags: &[&str],
    scripts: &[&str],
    base: &str,
) -> Finished {
    let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
    args.push("--".into());
    args.extend(netns.exec_prefix());
    args.extend(clients_argv(scripts));
    let base = base.to_owned();
    let agent = Agent::spawn_with(out, ca, &args, move |cmd| {
        cmd.env("OPENAI_BASE_URL", format!("{base}/v1"))
            .env("OLLAMA_HOST", &base);
    });
    agent.wait_started();
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());
    finished
}

/// Every file under `dir`, as text.
fn all_text(dir: &Path) -> String {
    let mut text = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).expect("read a snapshot directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                text.push_str(&String::from_utf8_lossy(
                    &std::fs::read(&path).expect("read"),
                ));
            }
        }
    }
    text
}

#[test]
fn openai_and_ollama_clients_over_plain_http_are_recorded_byte_for_byte() {
    if !privileged("plain-HTTP capture of a local model server") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start_plain(&netns, LOCAL_SERVER, &FakeProviderConfig::default());
    let out = tempfile::tempdir().expect("tempdir");
    let finished = capture(
        &netns,
        &ca,
        out.path(),
        &["--host", "localhost:11434"],
        &["openai_chat.py", "ollama_chat.py"],
        "http://localhost:11434",
    );
    let served = provider.requests();
    let recorded = exchanges(out.path());
    let paths: Vec<&str> = served.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/api/chat",
            "/api/generate"
        ],
        "{}",
        finished.dump()
    );
    assert_eq!(recorded.len(), served.len(), "{}", finished.dump());
    assert_eq!(figure(&finished.summary, "exchanges_incomplete"), 0);
    for (exchange, request) in recorded.iter().zip(&served) {
        let what = &request.path;
        assert_eq!(exchange["scheme"], "http", "{what}: {exchange:#}");
        assert_eq!(exchange["host"], "localhost", "{what}");
        assert_eq!(exchange["peer"], LOCAL_SERVER, "{what}");
        assert_eq!(exchange["request"]["path"], request.path.as_str());
        assert!(exchange["incomplete"].is_null(), "{what}: {exchange:#}");
        // Both bodies write back to the bytes that went over the wire.
        request.assert_recorded_as_sent(exchange);
        // Model and tokens, from the OpenAI and the Ollama formats alike.
        let usage = request.usage.as_ref().expect("the provider's usage");
        let summary = &exchange["summary"];
        assert_eq!(
            summary["model"], request.body["model"],
            "{what}: {summary:#}"
        );
        assert_eq!(
            summary["usage"]["input_tokens"], usage.input_tokens,
            "{what}"
        );
        assert_eq!(
            summary["usage"]["output_tokens"], usage.output_tokens,
            "{what}"
        );
        assert_eq!(exchange["streamed"], request.stream, "{what}");
    }
    assert_eq!(recorded[0]["summary"]["endpoint"], "chat_completions");
    assert_eq!(recorded[2]["summary"]["endpoint"], "ollama_chat");
    assert_eq!(recorded[3]["summary"]["endpoint"], "ollama_generate");
    // The SSE stream: every event, in order, paced.
    assert_paced_sse(&recorded[1]);
    // The NDJSON stream: every line the provider sent, in order, each with its offset.
    let body = &recorded[2]["response"]["body"];
    assert_eq!(body["kind"], "ndjson", "{body:#}");
    let lines = body["lines"].as_array().expect("lines");
    let sent: Vec<Value> = served[2]
        .response_body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(sent.len() >= 3, "{}", served[2].response_body);
    assert_eq!(
        lines.iter().map(|l| &l["json"]).collect::<Vec<_>>(),
        sent.iter().collect::<Vec<_>>()
    );
    assert_eq!(sent.last().unwrap()["done"], true);
    let offsets: Vec<f64> = lines
        .iter()
        .map(|l| l["offset_ms"].as_f64().expect("offset"))
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert!(
        offsets.last().unwrap() - offsets[0] >= 15.0,
        "lines were sent 20 ms apart: {offsets:?}"
    );
    // The client's answers came from these responses.
    let stdout = finished.command_stdout().join("\n");
    for request in &served {
        let nonce = request.nonce.as_deref().expect("a nonce");
        assert!(
            stdout.contains(nonce),
            "{nonce} not in the clients' output:\n{stdout}"
        );
    }
    // No key reaches any file of the snapshot.
    let text = all_text(out.path());
    for (_, key) in TEST_API_KEYS {
        assert!(!text.contains(key), "API key {key} reached the snapshot");
    }
}

#[test]
fn unselected_ports_and_tls_on_a_selected_port_record_nothing_of_their_own() {
    if !privileged("plain-HTTP capture selects destinations") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    // TLS on 127.0.0.1:443, selected as a plain destination too; plain HTTP on 8080, not selected.
    let tls = FakeProvider::start(&netns, &ca);
    let plain = FakeProvider::start_plain(&netns, "127.0.0.1:8080", &FakeProviderConfig::default());
    let out = tempfile::tempdir().expect("tempdir");
    let finished = capture(
        &netns,
        &ca,
        out.path(),
        &["--host", "localhost:443"],
        &["openai_chat.py"],
        "https://localhost",
    );
    assert_eq!(tls.requests().len(), 2, "{}", finished.dump());
    let unselected = capture(
        &netns,
        &ca,
        out.path(),
        &["--host", "localhost:443"],
        &["openai_chat.py"],
        "http://localhost:8080",
    );
    assert_eq!(plain.requests().len(), 2, "{}", unselected.dump());
    assert_eq!(
        figure(&unselected.summary, "exchanges_written"),
        0,
        "{}",
        unselected.dump()
    );
    assert_eq!(
        figure(&unselected.summary, "exchanges_ignored"),
        0,
        "{}",
        unselected.dump()
    );
    // Only the two TLS exchanges, read at the TLS library, whole: no ciphertext was parsed.
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    for exchange in &recorded {
        assert_eq!(exchange["scheme"], "https", "{exchange:#}");
        assert!(exchange["incomplete"].is_null(), "{exchange:#}");
    }
    let connections = &finished.summary["connections"];
    assert_eq!(
        figure(connections, "non_http_connections"),
        0,
        "{}",
        finished.dump()
    );
}

#[test]
fn vectored_socket_calls_are_recorded_whole() {
    if !privileged("plain-HTTP capture of sendmsg, recvmsg, writev and readv") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start_plain(&netns, LOCAL_SERVER, &FakeProviderConfig::default());
    let out = tempfile::tempdir().expect("tempdir");
    let finished = capture(
        &netns,
        &ca,
        out.path(),
        // By address: the requests name `localhost`, and are recorded all the same.
        &["--host", "127.0.0.1:11434"],
        &["plain_iovecs.py"],
        "http://localhost:11434",
    );
    let served = provider.requests();
    let recorded = exchanges(out.path());
    assert_eq!(served.len(), 2, "{}", finished.dump());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    for (exchange, request) in recorded.iter().zip(&served) {
        assert_eq!(exchange["host"], "localhost", "{exchange:#}");
        assert!(exchange["incomplete"].is_null(), "{exchange:#}");
        request.assert_recorded_as_sent(exchange);
    }
}

#[test]
fn any_host_records_every_plain_destination() {
    if !privileged("plain-HTTP capture with --any-host") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider =
        FakeProvider::start_plain(&netns, "127.0.0.1:8080", &FakeProviderConfig::default());
    let out = tempfile::tempdir().expect("tempdir");
    let finished = capture(
        &netns,
        &ca,
        out.path(),
        &["--any-host"],
        &["openai_chat.py"],
        "http://localhost:8080",
    );
    let served = provider.requests();
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), served.len(), "{}", finished.dump());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    for (exchange, request) in recorded.iter().zip(&served) {
        assert_eq!(exchange["scheme"], "http", "{exchange:#}");
        assert_eq!(exchange["peer"], "127.0.0.1:8080", "{exchange:#}");
        request.assert_recorded_as_sent(exchange);
    }
}
