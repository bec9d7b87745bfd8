//! Early filtering: a connection to a host nobody asked to record is skipped in the kernel
//! once its SNI is known, or, for a connection without SNI, once its first exchange shows its
//! host. One process (`skip_client.py`) opens a TLS connection to `localhost` (not recorded
//! by default) and a second one whose handshake names no server, makes one chat completion on
//! the second, one on a connection to `api.openai.com`, then chat completions with a 1 MiB
//! body among others on both unwanted connections. The wanted exchange is recorded byte for
//! byte; the unwanted connections' plaintext is accounted for exactly: what the kernel
//! skipped plus what reached the agent (before it knew) is what the client moved, the
//! skipped bytes are not drops, and their exchanges are still counted as ignored.
//!
//! Ring records sized to their payload: a ring buffer of 16 KiB, smaller than one record of
//! the largest class, still carries an SDK's chat completions whole, every event delivered.

mod capture_support;

use std::ffi::OsString;

use capture_support::{
    Agent, assert_summary_matches_disk, b64, body_bytes, command_args, exchanges, figure,
};
use llmsim_tests::{FakeProvider, TestCa, TestNetns, privileged};
use serde_json::Value;

#[test]
fn an_unwanted_connection_is_skipped_in_the_kernel_and_the_wanted_one_recorded_whole() {
    if !privileged("early in-kernel filtering of unwanted connections") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let finished = Agent::start(out.path(), &ca, &command_args(&netns, "skip_client.py")).finish();
    assert!(finished.status.success(), "{}", finished.dump());
    let dump = finished.dump();
    let report: Value = serde_json::from_str(finished.command_stdout().join("\n").trim())
        .unwrap_or_else(|e| panic!("client report ({e})\n{dump}"));
    assert_eq!(
        provider.requests().len() as u64,
        figure(&report, "unwanted_requests") + 1,
        "{dump}"
    );
    assert_summary_matches_disk(&finished, out.path());
    let summary = &finished.summary;

    // The wanted connection, byte for byte.
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 1, "{dump}");
    let exchange = &recorded[0];
    let wanted = &report["wanted"];
    assert_eq!(exchange["host"], "api.openai.com", "{dump}");
    assert!(exchange["incomplete"].is_null(), "{exchange:#}\n{dump}");
    assert_eq!(exchange["response"]["status"], wanted["status"], "{dump}");
    assert!(
        body_bytes(&exchange["request"]["body"]) == b64(&wanted["body_b64"]),
        "the request body differs from what was sent\n{dump}"
    );
    assert!(
        body_bytes(&exchange["response"]["body"]) == b64(&wanted["response_b64"]),
        "the response body differs from what was received\n{dump}"
    );

    // The unwanted connection: skipped in the kernel, not dropped, its exchanges counted.
    let skipped = &summary["skipped"];
    let skipped_bytes = figure(skipped, "bytes");
    assert!(figure(skipped, "calls") > 0, "{dump}");
    assert!(
        skipped_bytes >= 2 * 1024 * 1024,
        "the two 1 MiB requests, sent long after the SNI and the first exchange, were \
         skipped\n{dump}"
    );
    assert!(skipped_bytes <= figure(&report, "unwanted_bytes"), "{dump}");
    let connections = &summary["connections"];
    assert_eq!(
        skipped_bytes + figure(connections, "plaintext_bytes"),
        figure(&report, "unwanted_bytes") + figure(&report, "wanted_bytes"),
        "skipped plus delivered plaintext is what the client moved\n{dump}"
    );
    assert_eq!(figure(connections, "skipped_connections"), 2, "{dump}");
    assert_eq!(figure(connections, "skipped_evicted"), 0, "{dump}");
    assert_eq!(
        figure(summary, "exchanges_ignored"),
        figure(&report, "unwanted_requests"),
        "{dump}"
    );
    assert_eq!(figure(summary, "events_dropped_total"), 0, "{dump}");
    assert_eq!(figure(connections, "whole_calls_lost"), 0, "{dump}");
    assert_eq!(figure(summary, "exchanges_incomplete"), 0, "{dump}");
}

#[test]
fn short_calls_take_short_ring_records() {
    if !privileged("payload-sized ring records") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<OsString> = vec!["--ring-size".into(), "16384".into()];
    args.extend(command_args(&netns, "openai_chat.py"));
    let finished = Agent::start(out.path(), &ca, &args).finish();
    let dump = finished.dump();
    assert!(finished.status.success(), "{dump}");
    assert_eq!(finished.summary["exit_code"], 0, "{dump}");
    assert_eq!(provider.requests().len(), 2, "{dump}");
    assert_summary_matches_disk(&finished, out.path());
    assert_eq!(
        figure(&finished.summary, "events_dropped_total"),
        0,
        "{dump}"
    );
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{dump}");
    for exchange in &recorded {
        assert!(exchange["incomplete"].is_null(), "{exchange:#}\n{dump}");
        assert_eq!(exchange["response"]["status"], 200, "{dump}");
    }
}
