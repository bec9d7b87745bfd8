//! End-to-end replay: a recording made by `llmsim-agent capture` is served by
//! `replayd -- CMD` to the same unmodified SDK clients in a network namespace
//! with no network and no hosts mapping: replay alone makes api.openai.com
//! resolve, terminates TLS with its own CA and answers from the recording.

use std::{path::Path, time::Duration};

use llmsim_tests::{
    ClientRun, CommandOutput, TestNetns,
    flows::{record, replay_command},
    privileged, replayd, run_command,
    snapshot::openai_models,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `client` under `replayd --in snapshot` in an offline namespace.
fn replay(client: &str, snapshot: &Path, extra_env: &[(&str, &str)]) -> CommandOutput {
    let offline = TestNetns::offline();
    let mut cmd = replay_command(&offline, snapshot, client);
    cmd.envs(extra_env.iter().copied());
    run_command(cmd, &format!("replay of {client}"), TIMEOUT)
}

fn assert_replays_offline(client: &str) {
    let snapshot = tempfile::tempdir().expect("tempdir");
    let recorded = record(client, snapshot.path());
    assert_eq!(recorded.len(), 2);
    let output = replay(client, snapshot.path(), &[]);
    assert!(output.status.success(), "replay failed:\n{output}");
    let replayed = ClientRun::finish(output);
    assert_eq!(
        replayed.texts(),
        recorded,
        "replayed answers differ from the recorded ones"
    );
    let report = &replayed.output.stderr;
    assert!(report.contains("served 2 requests"), "report:\n{report}");
    assert!(report.contains(" 0 misses"), "report:\n{report}");
}

#[test]
fn openai_python_replays_offline_from_its_recording() {
    if !privileged("replay of openai-python") {
        return;
    }
    assert_replays_offline("openai_chat.py");
}

#[test]
fn openai_node_replays_offline_from_its_recording() {
    if !privileged("replay of openai-node") {
        return;
    }
    assert_replays_offline("openai_node.mjs");
}

#[test]
fn a_request_with_no_recording_fails_the_run_and_names_the_difference() {
    if !privileged("replay miss") {
        return;
    }
    let snapshot = tempfile::tempdir().expect("tempdir");
    record("openai_chat.py", snapshot.path());
    let output = replay(
        "openai_chat.py",
        snapshot.path(),
        &[("OPENAI_MODEL", "gpt-4.1-nano")],
    );
    assert!(
        !output.status.success(),
        "a miss must fail the run:\n{output}"
    );
    assert!(
        output.stderr.contains("/model"),
        "the diff names the model:\n{output}"
    );
    assert!(output.stderr.contains("gpt-4.1-nano"), "{output}");
}

#[test]
fn a_client_that_resolves_only_ipv6_reaches_the_recording() {
    if !privileged("replay to an IPv6-only client") {
        return;
    }
    let (snapshot, answer) = openai_models();

    // `curl -6` asks only for AAAA and connects only over an IPv6 socket.
    let offline = TestNetns::offline();
    let mut cmd = offline.command(replayd());
    cmd.arg("--in").arg(snapshot.path()).args([
        "--",
        "curl",
        "-6",
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        "https://api.openai.com/v1/models",
    ]);
    let output = run_command(cmd, "replay to curl -6", TIMEOUT);
    assert!(output.status.success(), "{output}");
    assert_eq!(output.stdout, answer.to_string(), "{output}");
}
