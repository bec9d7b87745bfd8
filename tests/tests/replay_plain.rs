//! Replay of plain-HTTP destinations: a local model server recorded on `localhost:11434`
//! (the official `openai` SDK through its OpenAI-compatible `/v1` and the official `ollama`
//! client through `/api/chat` NDJSON and `/api/generate`) is answered by `replayd -- CMD` in a
//! fresh network namespace, whether nothing listens on 11434 there or a decoy server does,
//! which must then receive nothing. The clients print what they printed when recorded, the
//! NDJSON stream arrives paced as recorded, and a request with no recording fails the run.

mod capture_support;

use std::{ffi::OsString, path::Path, time::Duration};

use capture_support::{Agent, Finished};
use llmsim_tests::{
    CommandOutput, FakeProvider, FakeProviderConfig, TestCa, TestNetns, clients_argv,
    flows::{REPLAY_API_KEY, replayd_command},
    privileged, run_command,
};
use serde_json::Value;

const LOCAL_SERVER: &str = "127.0.0.1:11434";
const BASE: &str = "http://localhost:11434";
const CLIENTS: [&str; 2] = ["openai_chat.py", "ollama_chat.py"];
const TIMEOUT: Duration = Duration::from_secs(120);

/// Records the clients against the fake provider on plain `127.0.0.1:11434` into `out`.
fn record(out: &Path) -> Finished {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start_plain(&netns, LOCAL_SERVER, &FakeProviderConfig::default());
    let mut args: Vec<OsString> = vec!["--host".into(), "localhost:11434".into(), "--".into()];
    args.extend(netns.exec_prefix());
    args.extend(clients_argv(&CLIENTS));
    let agent = Agent::spawn_with(out, &ca, &args, |cmd| {
        cmd.env("OPENAI_BASE_URL", format!("{BASE}/v1"))
            .env("OLLAMA_HOST", BASE);
    });
    agent.wait_started();
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(provider.requests().len(), 4, "{}", finished.dump());
    assert_eq!(
        capture_support::figure(&finished.summary, "exchanges_written"),
        4,
        "{}",
        finished.dump()
    );
    finished
}

/// `replayd --in snapshot -- <clients>` in `netns`, with `env` added.
fn replay(netns: &TestNetns, snapshot: &Path, env: &[(&str, &str)]) -> CommandOutput {
    let mut cmd = replayd_command(netns, snapshot, clients_argv(&CLIENTS));
    cmd.env(REPLAY_API_KEY.0, REPLAY_API_KEY.1)
        .env("OPENAI_BASE_URL", format!("{BASE}/v1"))
        .env("OLLAMA_HOST", BASE)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (name, value) in env {
        cmd.env(name, value);
    }
    run_command(cmd, "replayd -- clients", TIMEOUT)
}

/// The clients' JSON reports, without the arrival times of the NDJSON lines (which differ
/// between runs), and those times.
fn reports(stdout: &str) -> (Vec<Value>, Vec<f64>) {
    let mut arrivals = Vec::new();
    let reports = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let mut report: Value = serde_json::from_str(l).expect("a client report");
            for result in report["results"].as_array_mut().into_iter().flatten() {
                if let Some(times) = result.as_object_mut().and_then(|r| r.remove("arrivals_ms")) {
                    arrivals = times
                        .as_array()
                        .expect("times")
                        .iter()
                        .map(|t| t.as_f64().expect("a time"))
                        .collect();
                }
            }
            report
        })
        .collect();
    (reports, arrivals)
}

#[test]
fn recorded_plain_destinations_are_answered_with_nothing_listening_and_past_a_decoy() {
    if !privileged("replay of a plain-HTTP local model server") {
        return;
    }
    let snapshot = tempfile::tempdir().expect("tempdir");
    let recorded = record(snapshot.path());
    let (recorded_reports, recorded_arrivals) = reports(&recorded.command_stdout().join("\n"));
    assert_eq!(recorded_reports.len(), 2, "{}", recorded.dump());
    let recorded_spread = recorded_arrivals.last().unwrap() - recorded_arrivals[0];

    // Nothing listens on 11434 in a fresh namespace.
    let offline = TestNetns::offline();
    let output = replay(&offline, snapshot.path(), &[]);
    output.assert_success();
    let (replayed, arrivals) = reports(&output.stdout);
    assert_eq!(replayed, recorded_reports, "{output}");
    assert!(output.stderr.contains(" 0 misses"), "{output}");
    // The NDJSON stream is paced as recorded (lines 20 ms apart), not sent at once.
    let spread = arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= recorded_spread * 0.5 && spread >= 100.0,
        "replayed lines arrived over {spread} ms, recorded over {recorded_spread} ms: {arrivals:?}"
    );

    // A decoy server on 11434 gets nothing: the recording answers.
    let decoy_netns = TestNetns::offline();
    let decoy =
        FakeProvider::start_plain(&decoy_netns, LOCAL_SERVER, &FakeProviderConfig::default());
    let output = replay(&decoy_netns, snapshot.path(), &[]);
    output.assert_success();
    assert_eq!(reports(&output.stdout).0, recorded_reports, "{output}");
    assert_eq!(decoy.requests().len(), 0, "the decoy was reached\n{output}");
}

#[test]
fn a_plain_request_with_no_recording_fails_the_run() {
    if !privileged("replay miss on a plain-HTTP destination") {
        return;
    }
    let snapshot = tempfile::tempdir().expect("tempdir");
    record(snapshot.path());
    let offline = TestNetns::offline();
    let output = replay(
        &offline,
        snapshot.path(),
        &[("OLLAMA_MODEL", "qwen2.5:0.5b")],
    );
    assert!(
        !output.status.success(),
        "a miss must fail the run:\n{output}"
    );
    assert!(
        output.stderr.contains("/api/chat"),
        "the miss names the call:\n{output}"
    );
    assert!(output.stderr.contains("qwen2.5:0.5b"), "{output}");
}
