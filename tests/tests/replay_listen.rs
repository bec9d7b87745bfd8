//! End-to-end `replayd --listen`: the official `openai` Python SDK, pointed at replayd with
//! its ordinary `OPENAI_BASE_URL`, gets exactly the answers a fake provider gave earlier
//! (the per-answer nonces prove it), with the fake provider gone; a changed prompt is a miss
//! the SDK surfaces as an error naming the differing field, and replayd's end-of-run report
//! and exit code say so. Needs no root: the snapshot is written from the fake provider's
//! request log rather than captured.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use llmsim_tests::{
    ClientRun, FakeProvider, FakeProviderConfig, ListeningReplayd, ProviderRequest, TestCa,
    client_argv, configure_client_env, run_client_on_loopback, run_command,
    snapshot::write_exchanges,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Recorded spacing of stream events, ms.
const EVENT_SPACING_MS: f64 = 20.0;

/// The SSE events of a recorded stream body, as the snapshot format stores them.
fn sse_events(text: &str) -> Vec<Value> {
    let mut offset = 0.0;
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = json!({"offset_ms": offset});
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                } else if let Some(value) = line.strip_prefix("event:") {
                    event["event"] = json!(value.trim_start());
                }
            }
            event["data"] = json!(data.join("\n"));
            offset += EVENT_SPACING_MS;
            event
        })
        .collect()
}

/// Writes one exchange file per request the fake provider served, as capture would have
/// recorded them for api.openai.com.
fn write_snapshot(dir: &Path, served: &[ProviderRequest]) {
    write_exchanges(
        dir,
        served.iter().map(|request| {
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = if name == "authorization" {
                        "Bearer <redacted:00000000>".to_owned()
                    } else {
                        value.clone()
                    };
                    (name.clone(), value)
                })
                .collect();
            let (body, duration_ms) = if request.stream {
                let events = sse_events(&request.response_body);
                let last = events
                    .last()
                    .and_then(|e| e["offset_ms"].as_f64())
                    .unwrap_or(0.0);
                (json!({"kind": "sse", "events": events}), last)
            } else {
                let answer: Value = serde_json::from_str(&request.response_body)
                    .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {request:?}"));
                (json!({"kind": "json", "json": answer}), 5.0)
            };
            json!({
                "provider": "openai",
                "host": "api.openai.com",
                "scheme": "https",
                "process": {"pid": 1, "comm": "python3", "exe": null},
                "started_at": "2026-07-01T09:00:00Z",
                "duration_ms": duration_ms,
                "streamed": request.stream,
                "model": request.body["model"],
                "request": {
                    "method": request.method,
                    "path": request.path,
                    "headers": headers,
                    "body": {"kind": "json", "json": request.body},
                },
                "response": {
                    "status": request.status,
                    "headers": request.response_headers.iter().collect::<Vec<_>>(),
                    "body": body,
                },
            })
        }),
    );
}

/// A command running `argv` as an app pointed at replayd through `OPENAI_BASE_URL`.
fn app_command(argv: &[std::ffi::OsString], ca: &TestCa, replay: &ListeningReplayd) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    configure_client_env(&mut cmd, ca);
    cmd.env("OPENAI_BASE_URL", format!("{}/v1", replay.origin()));
    cmd
}

/// The plain request of `openai_chat.py` with another prompt; prints the SDK's error.
const CHANGED_PROMPT: &str = r#"
import openai
client = openai.OpenAI(timeout=30.0, max_retries=0)
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Say goodbye to the plain request."},
    ])
except openai.APIStatusError as e:
    print(type(e).__name__, e.status_code, e.message)
    raise SystemExit(3)
print("unexpected success")
"#;

#[test]
fn openai_python_gets_the_recorded_answers_from_replayd_listen() {
    let ca = TestCa::new();
    let snapshot = tempfile::tempdir().expect("tempdir");

    // The "capture": the SDK against the fake provider, recorded from its log.
    let recorded: ClientRun;
    {
        let provider = FakeProvider::start_on_loopback(None, &FakeProviderConfig::default());
        recorded = run_client_on_loopback(&provider, &ca, "openai_chat.py");
        let served = provider.requests();
        assert_eq!(served.len(), 2, "a plain and a streamed request");
        write_snapshot(snapshot.path(), &served);
    } // The fake provider is gone from here on.

    let replay = ListeningReplayd::start(snapshot.path(), &[]);
    let output = run_command(
        app_command(&client_argv("openai_chat.py"), &ca, &replay),
        "openai_chat.py against replayd",
        TIMEOUT,
    );
    let replayed = ClientRun::finish(output);
    assert_eq!(replayed.report.results.len(), 2);
    for (want, got) in recorded.report.results.iter().zip(&replayed.report.results) {
        let nonce = want.nonce().expect("the recorded answer carries a nonce");
        assert_eq!(got.nonce().as_deref(), Some(nonce.as_str()), "{got:?}");
        assert_eq!(got.text, want.text);
        assert_eq!(got.id, want.id);
        assert_eq!(got.stream, want.stream);
        assert_eq!(got.usage, want.usage);
        assert_eq!(got.finish_reason, want.finish_reason);
    }
    let (code, report) = replay.stop();
    let text = report.join("\n");
    assert!(
        report
            .iter()
            .any(|l| l == "replayd: served 2 requests (0 repeats), 0 misses"),
        "{text}"
    );
    assert!(text.contains("POST /v1/chat/completions"), "{text}");
    assert_eq!(code, Some(0), "{text}");

    // A changed prompt: the SDK raises with the field that differs; replayd exits 1.
    let replay = ListeningReplayd::start(snapshot.path(), &[]);
    let argv = [
        std::ffi::OsString::from("python3"),
        "-c".into(),
        CHANGED_PROMPT.into(),
    ];
    let output = run_command(
        app_command(&argv, &ca, &replay),
        "changed prompt against replayd",
        TIMEOUT,
    );
    assert_eq!(output.status.code(), Some(3), "{output}");
    let said = output.stdout.trim();
    assert!(said.starts_with("NotFoundError 404"), "{output}");
    assert!(said.contains("no recording matches"), "{output}");
    assert!(said.contains("/messages/1/content"), "{output}");
    assert!(
        said.contains("Say goodbye to the plain request."),
        "{output}"
    );
    assert!(
        said.contains("000001-openai-post-v1-chat-completions.json"),
        "{output}"
    );
    let (code, report) = replay.stop();
    let text = report.join("\n");
    assert!(
        report
            .iter()
            .any(|l| l == "replayd: served 0 requests (0 repeats), 1 misses"),
        "{text}"
    );
    assert!(text.contains("/messages/1/content"), "{text}");
    assert_eq!(code, Some(1), "{text}");
}
