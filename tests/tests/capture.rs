//! End-to-end capture: `llmsim-agent capture -- CMD` records real SDK clients
//! (openai-python, openai-node) talking HTTPS under the provider's real host
//! name to the local fake provider, and the snapshot holds exactly what went
//! over the wire, redacted. Plus the bad-input paths a user hits first.

mod capture_support;

use std::{path::Path, process::Command, time::Duration};

use capture_support::{assert_paced_sse, exchanges, figure};
use llmsim_tests::{
    ClientRun, FakeProvider, TEST_API_KEYS, TestCa, TestNetns, configure_client_env, llmsim_agent,
    netns_client_argv, privileged, run_command,
};
use serde_json::Value;

const CAPTURE_TIMEOUT: Duration = Duration::from_secs(180);

/// Every byte of the snapshot directory, for secret checks.
fn snapshot_text(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir.join("exchanges")).expect("exchanges dir") {
        all.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("read"));
    }
    all
}

fn capture(netns: &TestNetns, ca: &TestCa, out: &Path, client: &str) -> ClientRun {
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture")
        .arg("--out")
        .arg(out)
        .arg("--json")
        .arg("--")
        .args(netns_client_argv(netns, client));
    configure_client_env(&mut cmd, ca);
    let mut output = run_command(cmd, &format!("capture of {client}"), CAPTURE_TIMEOUT);
    // The client's report comes first on stdout, the agent's JSON summary last.
    let stdout = std::mem::take(&mut output.stdout);
    let (client_out, summary) = stdout.split_at(stdout.rfind("\n{").map_or(0, |i| i + 1));
    client_out.clone_into(&mut output.stdout);
    let summary: Value = serde_json::from_str(summary)
        .unwrap_or_else(|e| panic!("agent summary is not JSON ({e}): {summary}\n{output}"));
    assert_eq!(summary["exit_code"], 0, "{output}");
    assert_eq!(summary["exchanges_incomplete"], 0, "{output}");
    assert_eq!(
        figure(&summary, "events_dropped_total"),
        0,
        "kernel events were dropped:\n{output}"
    );
    ClientRun::finish(output)
}

/// The capture of one plain and one streamed chat completion matches what the
/// client sent and received, byte for byte where it matters.
fn assert_chat_capture(client: &str) {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let run = capture(&netns, &ca, out.path(), client);
    let recorded = exchanges(out.path());
    assert_eq!(
        recorded.len(),
        2,
        "expected a plain and a streamed exchange"
    );
    let served = provider.requests();
    assert_eq!(served.len(), 2);

    for (i, (exchange, result)) in recorded.iter().zip(&run.report.results).enumerate() {
        assert_eq!(exchange["provider"], "openai");
        assert_eq!(exchange["host"], "api.openai.com");
        assert_eq!(exchange["request"]["method"], "POST");
        assert_eq!(exchange["request"]["path"], "/v1/chat/completions");
        assert_eq!(exchange["response"]["status"], 200);
        assert!(
            exchange["incomplete"].is_null(),
            "exchange {i} flagged incomplete"
        );
        // The request body is the JSON the provider received.
        assert_eq!(
            exchange["request"]["body"]["json"], served[i].body,
            "request body {i}"
        );
        // Both bodies are stored so that replay writes the bytes that went over the wire.
        served[i].assert_recorded_as_sent(exchange);
        // The answer the client printed came from the recorded response.
        let nonce = result.nonce().expect("client answer carries a nonce");
        let response = serde_json::to_string(&exchange["response"]["body"]).unwrap();
        assert!(
            response.contains(&nonce),
            "recorded response {i} lacks nonce {nonce}"
        );
        assert_eq!(exchange["streamed"], result.stream);
    }
    // The streamed response is stored as its SSE events, in order, with offsets.
    assert_paced_sse(&recorded[1]);
    // Keys never reach disk.
    let text = snapshot_text(out.path());
    for (_, key) in TEST_API_KEYS {
        assert!(!text.contains(key), "API key {key} reached the snapshot");
    }
    assert!(
        text.contains("Bearer <redacted:"),
        "authorization placeholder missing"
    );
}

#[test]
fn captures_openai_python_plain_and_streamed() {
    if !privileged("capture of openai-python") {
        return;
    }
    assert_chat_capture("openai_chat.py");
}

#[test]
fn captures_openai_node_with_its_static_openssl() {
    if !privileged("capture of openai-node") {
        return;
    }
    assert_chat_capture("openai_node.mjs");
}

#[test]
fn a_missing_pid_is_one_line_and_exit_code_2() {
    if !privileged("capture of a missing pid") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(llmsim_agent());
    cmd.args(["capture", "--pid", "999999999", "--out"])
        .arg(out.path());
    let output = run_command(cmd, "capture of a missing pid", CAPTURE_TIMEOUT);
    assert_eq!(output.status.code(), Some(2), "{output}");
    assert_eq!(
        output.stderr.trim(),
        "llmsim-agent: no process with pid 999999999"
    );
}

#[test]
fn without_privileges_capture_says_what_is_missing() {
    if !privileged("capture without privileges") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(llmsim_agent())
    .args(["capture", "--all", "--out"])
    .arg(out.path());
    let output = run_command(cmd, "capture as nobody", CAPTURE_TIMEOUT);
    assert_eq!(output.status.code(), Some(2), "{output}");
    assert!(
        output
            .stderr
            .trim()
            .starts_with("llmsim-agent: missing privilege: run as root"),
        "{output}"
    );
    assert_eq!(output.stderr.trim().lines().count(), 1, "{output}");
}
