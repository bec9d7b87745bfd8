//! Which hosts are recorded: only the known providers by default; `--host PATTERN` adds hosts
//! matching a glob, `--any-host` records every HTTP exchange. The other host here is `localhost`
//! inside the test network namespace, served by the same fake provider (its certificate names
//! `localhost`), reached by the openai SDK through its ordinary `OPENAI_BASE_URL`.

mod capture_support;

use std::ffi::OsString;

use capture_support::{
    Agent, Finished, assert_summary_matches_disk, command_args, exchanges, figure,
};
use llmsim_tests::{FakeProvider, TestCa, TestNetns, privileged};

/// Captures `openai_chat.py` talking to `https://localhost/v1` with `flags`.
fn capture_localhost(flags: &[&str]) -> (Finished, Vec<serde_json::Value>, tempfile::TempDir) {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
    args.extend(command_args(&netns, "openai_chat.py"));
    let agent = Agent::spawn_with(out.path(), &ca, &args, |cmd| {
        cmd.env("OPENAI_BASE_URL", "https://localhost/v1");
    });
    agent.wait_started();
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());
    let served = provider.requests();
    assert_eq!(served.len(), 2, "{}", finished.dump());
    assert!(
        served
            .iter()
            .all(|r| r.host.as_deref() == Some("localhost"))
    );
    assert_summary_matches_disk(&finished, out.path());
    let recorded = exchanges(out.path());
    (finished, recorded, out)
}

#[test]
fn other_hosts_are_ignored_by_default() {
    if !privileged("capture ignores other hosts") {
        return;
    }
    let (finished, recorded, _out) = capture_localhost(&[]);
    assert!(recorded.is_empty(), "{}", finished.dump());
    assert_eq!(figure(&finished.summary, "exchanges_ignored"), 2);
    assert_eq!(figure(&finished.summary, "exchanges_written"), 0);
}

#[test]
fn a_pattern_that_does_not_match_changes_nothing() {
    if !privileged("capture with a non-matching --host") {
        return;
    }
    let (finished, recorded, _out) = capture_localhost(&["--host", "*.example.com"]);
    assert!(recorded.is_empty(), "{}", finished.dump());
    assert_eq!(figure(&finished.summary, "exchanges_ignored"), 2);
}

#[test]
fn host_patterns_and_any_host_record_other_hosts() {
    if !privileged("capture with --host and --any-host") {
        return;
    }
    for flags in [&["--host", "LOCAL*"][..], &["--any-host"][..]] {
        let (finished, recorded, _out) = capture_localhost(flags);
        assert_eq!(recorded.len(), 2, "{flags:?}\n{}", finished.dump());
        for exchange in &recorded {
            assert_eq!(exchange["host"], "localhost");
            assert_eq!(exchange["request"]["path"], "/v1/chat/completions");
            assert_eq!(exchange["response"]["status"], 200);
            assert!(exchange["incomplete"].is_null(), "{exchange:#}");
        }
        assert_eq!(figure(&finished.summary, "exchanges_ignored"), 0);
    }
}
