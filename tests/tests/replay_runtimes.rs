//! Replay trust for the JavaScript runtimes that do not read `SSL_CERT_FILE`, end to end:
//! Bun (`BoringSSL` linked in without symbols, so capture cannot record it: `capture_runtimes.rs`)
//! and Deno (rustls with its own roots), both from npm (`tests/clients/package.json`).
//! `replayd --on-miss record -- RUNTIME node_fetch.mjs` records the plain and streamed chat
//! completions from the fake provider, then an offline `replayd -- RUNTIME node_fetch.mjs`
//! answers them from the recording. Both runs reach replayd's TLS only because replayd hands
//! the runtime the replay CA (Bun reads `SSL_CERT_FILE` and `NODE_EXTRA_CA_CERTS`, either
//! one is enough; Deno reads `DENO_CERT`; the machine's own values are removed first), and
//! the replayed output is byte for byte the recorded one.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use llmsim_tests::{
    FakeProvider, TestCa, TestNetns, client_script, clients_dir,
    flows::{replayd_command, replayd_recording_command},
    privileged, requires, run_command,
    snapshot::exchange_paths,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(240);
const API_KEY: &str = "sk-proj-E2ERUNTIMESECRET0123456789abcdef";

/// A runtime as `npm ci` installs it (`node_modules/.bin/NAME`).
fn runtime(name: &str) -> PathBuf {
    clients_dir().join("node_modules/.bin").join(name)
}

/// The answers a `node_fetch.mjs` run printed.
fn results(stdout: &str) -> Vec<Value> {
    let printed: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the client printed no JSON ({e}):\n{stdout}"));
    printed["results"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_bun_fetch_records_through_replayd_and_replays_offline_trusting_the_replay_ca() {
    records_and_replays("bun", &[]);
}

#[test]
fn a_deno_fetch_records_through_replayd_and_replays_offline_trusting_the_replay_ca() {
    records_and_replays("deno", &["run", "--allow-env", "--allow-net"]);
}

/// Records `node_fetch.mjs` run by the runtime `name` (with `args` before the script)
/// through replayd, then replays it offline, and compares the two outputs.
fn records_and_replays(name: &str, args: &[&str]) {
    let what = format!("replay of a {name} client");
    if !privileged(&what)
        || !requires(
            runtime(name).is_file(),
            &what,
            &format!(
                "tests/clients/node_modules/.bin/{name} is missing (scripts/setup.sh runs npm ci)"
            ),
        )
    {
        return;
    }
    let client: Vec<OsString> = std::iter::once(runtime(name).into_os_string())
        .chain(args.iter().map(OsString::from))
        .chain(std::iter::once(
            client_script("node_fetch.mjs").into_os_string(),
        ))
        .collect();
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let snapshot = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");

    // Bun must reach replayd, not the fake provider, and trust only what replayd gives it.
    let mut cmd = replayd_recording_command(&netns, &ca, snapshot.path(), data.path(), &client);
    cmd.env("OPENAI_API_KEY", API_KEY)
        .env("DENO_NO_UPDATE_CHECK", "1")
        .env_remove("NODE_EXTRA_CA_CERTS")
        .env_remove("DENO_CERT")
        .env_remove("OPENAI_BASE_URL");
    let recorded = run_command(
        cmd,
        &format!("replayd --on-miss record -- {name} node_fetch.mjs"),
        TIMEOUT,
    );
    assert!(recorded.status.success(), "record run failed:\n{recorded}");
    let requests = provider.requests();
    assert_eq!(requests.len(), 2, "both calls reached the provider");
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {API_KEY}").as_str()),
            "the key is forwarded as sent"
        );
    }
    let answers = results(&recorded.stdout);
    assert_eq!(answers.len(), 2, "two answers:\n{recorded}");
    for answer in &answers {
        let text = answer["text"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("Fake openai answer nonce-"),
            "the answer is the provider's: {answer}\n{recorded}"
        );
    }
    assert!(
        recorded
            .stderr
            .contains("passed through 2 requests to the real API (2 recorded)"),
        "report:\n{recorded}"
    );
    let files = exchange_paths(snapshot.path());
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read an exchange file");
        assert!(
            !text.contains("E2ERUNTIMESECRET"),
            "the key leaked into {}",
            file.display()
        );
    }
    drop(provider);

    // Offline, with the default --on-miss fail: the recording answers, the same bytes.
    let offline = TestNetns::offline();
    let mut cmd = replayd_command(&offline, snapshot.path(), client);
    cmd.env("XDG_DATA_HOME", data.path())
        .env("OPENAI_API_KEY", "sk-replay-needs-no-key")
        .env("DENO_NO_UPDATE_CHECK", "1")
        .env_remove("DENO_CERT")
        .env_remove("OPENAI_BASE_URL");
    let replayed = run_command(
        cmd,
        &format!("offline replayd -- {name} node_fetch.mjs"),
        TIMEOUT,
    );
    assert!(replayed.status.success(), "replay failed:\n{replayed}");
    assert_eq!(
        replayed.stdout, recorded.stdout,
        "the replayed answers are the recorded bytes"
    );
    assert!(
        replayed.stderr.contains("served 2 requests"),
        "report:\n{replayed}"
    );
    assert!(replayed.stderr.contains(" 0 misses"), "report:\n{replayed}");
}
