//! The demo's promise, end to end: the support-ticket triage app, unmodified,
//! runs its whole 240-call pipeline (`OpenAI`, Anthropic, Gemini and xAI through
//! their official SDKs) under `replayd` from the bundled recording, offline and
//! with no keys, and prints exactly what the recorded run printed.

use std::time::Duration;

use llmsim_tests::{
    TestNetns, flows::REPLAY_API_KEYS, privileged, replayd, repo_root, run_command,
};

#[test]
fn the_triage_demo_replays_240_calls_offline_with_the_recorded_output() {
    if !privileged("triage demo replay") {
        return;
    }
    let root = repo_root();
    let dir = root.join("examples/triage");
    let results = tempfile::tempdir().expect("tempdir");
    let results_file = results.path().join("results.json");
    let offline = TestNetns::offline();
    let mut cmd = offline.command(replayd());
    cmd.arg("--in")
        .arg(dir.join("llmsim"))
        .arg("--")
        .arg("python3")
        .arg(dir.join("app.py"))
        .arg("--no-timings")
        .arg("--json-out")
        .arg(&results_file);
    cmd.envs(REPLAY_API_KEYS.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(cmd, "replay of the triage demo", Duration::from_secs(300));
    assert!(output.status.success(), "{output}");
    assert!(
        output
            .stderr
            .contains("served 240 requests (0 repeats), 0 misses"),
        "{output}"
    );

    let recorded_output =
        std::fs::read_to_string(dir.join("recorded-output.txt")).expect("recorded-output.txt");
    assert_eq!(
        output.stdout, recorded_output,
        "the replayed run printed something else"
    );
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("recorded-results.json")).expect("recorded-results.json"),
    )
    .expect("recorded results are JSON");
    let replayed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results_file).expect("results written"))
            .expect("replayed results are JSON");
    assert_eq!(
        replayed, recorded,
        "the replayed results differ from the recorded ones"
    );
}

#[test]
fn the_bundled_recording_passes_verify() {
    let dir = repo_root().join("examples/triage/llmsim");
    let output = run_command(
        {
            let mut cmd = std::process::Command::new(llmsim_tests::llmsim_agent());
            cmd.arg("verify").arg(&dir);
            cmd
        },
        "verify of the bundled recording",
        Duration::from_secs(120),
    );
    assert!(output.status.success(), "{output}");
}
