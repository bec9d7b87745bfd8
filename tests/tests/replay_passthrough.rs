//! End-to-end `--on-miss record`: `replayd` runs an unmodified openai-python app in a
//! namespace where a fake provider listens on 443 for the provider names; with an empty
//! snapshot every request misses, so replayd forwards it to the fake provider (verifying
//! its certificate against the test CA through `SSL_CERT_FILE`) and appends the exchanges,
//! redacted. A second run with the default `--on-miss fail`, offline, replays them.
//!
//! The app must reach replayd, not the fake provider: the namespace's hosts file maps the
//! provider names to loopback, which the redirect leaves alone, so the app runs in a mount
//! namespace of its own with a hosts file that does not name them. Its lookups then go to
//! replayd's DNS, which answers the known provider hosts when misses are forwarded.

use std::{process::Command, time::Duration};

use llmsim_tests::{
    ClientRun, FakeProvider, TestCa, TestNetns, client_argv,
    flows::{replay_command, replayd_recording_command},
    privileged, run_command,
    snapshot::exchange_paths,
};

const TIMEOUT: Duration = Duration::from_secs(180);
const API_KEY: &str = "sk-proj-E2ERECORDSECRET0123456789abcdef";

#[test]
fn record_forwards_misses_to_the_real_host_and_a_later_run_replays_them_offline() {
    if !privileged("replay --on-miss record") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let snapshot = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");

    // The app gets replayd's bundle.
    let mut cmd = replayd_recording_command(
        &netns,
        &ca,
        snapshot.path(),
        data.path(),
        &client_argv("openai_chat.py"),
    );
    cmd.env("OPENAI_API_KEY", API_KEY)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE");
    let output = run_command(cmd, "replayd --on-miss record", TIMEOUT);
    assert!(output.status.success(), "record run failed:\n{output}");
    let recorded = ClientRun::finish(output);
    assert_eq!(
        provider.requests().len(),
        2,
        "both calls reached the provider"
    );
    for result in &recorded.report.results {
        let nonce = result
            .nonce()
            .unwrap_or_else(|| panic!("no nonce in {result:?}"));
        let request = provider.request_with_nonce(&nonce);
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {API_KEY}").as_str()),
            "the key is forwarded as sent"
        );
    }
    let report = &recorded.output.stderr;
    assert!(
        report.contains("passed through 2 requests to the real API (2 recorded)"),
        "report:\n{report}"
    );
    let files = exchange_paths(snapshot.path());
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read an exchange file");
        assert!(
            !text.contains("E2ERECORDSECRET"),
            "the key leaked into {}",
            file.display()
        );
    }
    drop(provider);

    // Offline, with the default --on-miss fail: the new recordings answer.
    let offline = TestNetns::offline();
    let mut cmd: Command = replay_command(&offline, snapshot.path(), "openai_chat.py");
    cmd.env("XDG_DATA_HOME", data.path());
    let output = run_command(cmd, "offline replay of the recording", TIMEOUT);
    assert!(output.status.success(), "replay failed:\n{output}");
    let replayed = ClientRun::finish(output);
    assert_eq!(replayed.texts(), recorded.texts());
    let report = &replayed.output.stderr;
    assert!(report.contains("served 2 requests"), "report:\n{report}");
    assert!(report.contains(" 0 misses"), "report:\n{report}");
}
