//! `llmsim-agent coverage --pid PID [--duration D] [--json]` on running processes: the rustls
//! client (`llmsim-rustls-client`, steps mode: one connection per request, made after the
//! watch started) with its symbols is decrypted (its exchanges counted, the rustls probes
//! listed, nothing listed as not decrypted); stripped, its connection is listed with the
//! reason rustls, its SNI and peer. `--duration` ends the watch of a process that makes no
//! connection, with an empty report.

mod capture_support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use capture_support::{Output, StepClient, assert_not_decrypted};
use llmsim_tests::{
    ChildGuard, FakeProvider, TestCa, TestNetns, llmsim_agent, on_path, privileged, requires,
    run_command, stripped_copy,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

fn client() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llmsim-rustls-client"))
}

/// Starts `client` in steps mode in `netns`, watches it with `llmsim-agent coverage --pid
/// PID --json`, has it make a plain and a streamed request, ends it, and returns the report.
fn watch(netns: &TestNetns, ca: &TestCa, client: &Path) -> (Value, Vec<Value>) {
    let mut cmd = netns.command(client);
    cmd.args(["api.openai.com", "steps"]);
    let mut steps = StepClient::start(cmd, ca);
    let mut agent = Command::new(llmsim_agent());
    agent
        .args(["coverage", "--json", "--pid", &steps.pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(&mut agent, "llmsim-agent coverage");
    let stdout = Output::new(
        child.child_mut().stdout.take().expect("piped"),
        "coverage stdout",
    );
    let stderr = Output::new(
        child.child_mut().stderr.take().expect("piped"),
        "coverage stderr",
    );
    stderr.wait_for(
        |l| l.starts_with("llmsim-agent: watching pid "),
        TIMEOUT,
        String::new,
    );
    let results = vec![steps.step("plain"), steps.step("stream")];
    steps.quit();
    let status = child.wait_timeout(TIMEOUT);
    let text = stdout.wait_closed(TIMEOUT).join("\n");
    let errors = stderr.wait_closed(TIMEOUT).join("\n");
    assert!(status.success(), "{status}\n{text}\n{errors}");
    let report: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{text}\n{errors}"));
    (report, results)
}

#[test]
fn a_running_rustls_process_with_symbols_is_decrypted() {
    if !privileged("live coverage of a rustls process") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let (report, _) = watch(&netns, &ca, &client());
    assert_eq!(provider.requests().len(), 2);
    assert_eq!(report["exchanges_decrypted"], 2, "{report:#}");
    assert_eq!(
        report["not_decrypted"],
        Value::Array(Vec::new()),
        "{report:#}"
    );
    let probes = report["probes"].as_array().expect("probes");
    assert!(
        probes
            .iter()
            .any(|p| p["placement"] == "rustls" && p["object"] == "llmsim-rustls-client"),
        "{report:#}"
    );
}

#[test]
fn a_running_stripped_rustls_process_is_listed_with_the_reason() {
    if !privileged("live coverage of a stripped rustls process")
        || !requires(
            on_path("strip"),
            "live coverage of a stripped rustls process",
            "needs strip (Debian's binutils, scripts/setup.sh)",
        )
    {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let stripped = stripped_copy(&client(), work.path());
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let (report, _) = watch(&netns, &ca, &stripped);
    assert_eq!(provider.requests().len(), 2);
    assert_eq!(report["exchanges_decrypted"], 0, "{report:#}");
    let listed = report["not_decrypted"].as_array().expect("not_decrypted");
    // One connection per request.
    assert_eq!(listed.len(), 2, "{report:#}");
    for entry in listed {
        assert_not_decrypted(entry, "rustls", "api.openai.com", &stripped, &provider);
    }
}

#[test]
fn duration_ends_the_watch() {
    if !privileged("live coverage --duration") {
        return;
    }
    let mut sleeper = Command::new("sleep");
    sleeper.arg("300");
    let sleeper = ChildGuard::spawn(&mut sleeper, "sleep");
    let mut cmd = Command::new(llmsim_agent());
    cmd.args([
        "coverage",
        "--pid",
        &sleeper.id().to_string(),
        "--duration",
        "1s",
    ]);
    let output = run_command(cmd, "llmsim-agent coverage --duration 1s", TIMEOUT);
    assert!(output.status.success(), "{output}");
    assert!(
        output.stdout.starts_with("decrypted: 0 HTTP exchanges\n"),
        "{output}"
    );
    assert!(!output.stdout.contains("not decrypted"), "{output}");
    let mut bad = Command::new(llmsim_agent());
    bad.args(["coverage", "--pid", "1", "--duration", "soon"]);
    let output = run_command(bad, "llmsim-agent coverage --duration soon", TIMEOUT);
    assert_eq!(output.status.code(), Some(2), "{output}");
    assert!(
        output
            .stderr
            .contains("`soon` is not a duration such as 30s, 5m or 500ms"),
        "{output}"
    );
}
