//! Replay trust for the JavaScript runtimes that do not read `SSL_CERT_FILE` alone, end to
//! end: Bun (`BoringSSL` linked in without symbols, so capture cannot record it:
//! `capture_runtimes.rs`) and Deno (rustls with its own roots), both from npm
//! (`tests/clients/package.json`). Each records the plain and streamed chat completions of
//! `node_fetch.mjs` through `replayd --on-miss record` and replays them offline. Both runs
//! reach replayd's TLS only because replayd hands the runtime the replay CA (Bun reads
//! `SSL_CERT_FILE` and `NODE_EXTRA_CA_CERTS`, either one is enough; Deno reads `DENO_CERT`;
//! the machine's own values are removed first), and the replayed output is byte for byte the
//! recorded one.

use llmsim_tests::{flows::record_then_replay_through_replayd, js_runtime_fetch};
use serde_json::Value;

#[test]
fn a_bun_fetch_records_through_replayd_and_replays_offline_trusting_the_replay_ca() {
    records_and_replays("bun", &[]);
}

#[test]
fn a_deno_fetch_records_through_replayd_and_replays_offline_trusting_the_replay_ca() {
    records_and_replays("deno", &["run", "--allow-env", "--allow-net"]);
}

/// Records `node_fetch.mjs` run by the runtime `name` (with `args` before the script)
/// through replayd, replays it offline, and checks the answers are the provider's.
fn records_and_replays(name: &str, args: &[&str]) {
    let Some(client) = js_runtime_fetch(name, args, &format!("replay of a {name} client")) else {
        return;
    };
    let runs = record_then_replay_through_replayd(
        &client,
        "E2ERUNTIMESECRET",
        // Deno would otherwise look for a newer release of itself.
        &[("DENO_NO_UPDATE_CHECK", "1")],
        &["NODE_EXTRA_CA_CERTS", "DENO_CERT"],
    );
    let printed: Value = serde_json::from_str(runs.recorded.stdout.trim())
        .unwrap_or_else(|e| panic!("the client printed no JSON ({e}):\n{}", runs.recorded));
    let answers = printed["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(answers.len(), 2, "two answers:\n{}", runs.recorded);
    for answer in &answers {
        let text = answer["text"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("Fake openai answer nonce-"),
            "the answer is the provider's: {answer}\n{}",
            runs.recorded
        );
    }
}
