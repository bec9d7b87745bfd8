//! A long-context prompt: one request body of more than 4 MiB, sent by the official openai
//! Python SDK (which hands the whole body to one `SSL_write_ex`), reaches the snapshot whole. The
//! kernel splits such a call into ring-buffer chunks; the agent must put every one back, drop
//! none and not flag the exchange.

mod capture_support;

use std::io::Write as _;
use std::process::{Command, Stdio};

use capture_support::{Agent, assert_summary_matches_disk, command_args, exchanges, figure};
use llmsim_tests::{FakeProvider, TestCa, TestNetns, privileged};
use serde_json::Value;

/// The SHA-256 of `text`, by `sha256sum` (the harness has no hashing crate).
fn sha256_hex(text: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    let mut stdin = child.stdin.take().expect("piped");
    let input = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("sha256sum output");
    writer
        .join()
        .expect("writer thread")
        .expect("writing to sha256sum");
    assert!(output.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_prompt_of_more_than_4_mib_is_captured_whole() {
    if !privileged("capture of a 4 MiB prompt") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");

    let agent = Agent::start(
        out.path(),
        &ca,
        &command_args(&netns, "openai_long_prompt.py"),
    );
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());

    let report: Value = serde_json::from_str(finished.command_stdout().join("\n").trim())
        .unwrap_or_else(|e| panic!("client report ({e})\n{}", finished.dump()));
    let result = &report["results"][0];
    let prompt_chars = result["prompt_chars"].as_u64().expect("prompt_chars");
    let prompt_sha256 = result["prompt_sha256"].as_str().expect("prompt_sha256");

    let served = provider.requests();
    assert_eq!(served.len(), 1, "one request served");
    let received = served[0].body["messages"][1]["content"]
        .as_str()
        .expect("the provider received the prompt");

    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 1, "{}", finished.dump());
    let exchange = &recorded[0];
    assert!(
        exchange["incomplete"].is_null(),
        "flagged incomplete: {}",
        exchange["incomplete"]
    );
    assert_eq!(exchange["response"]["status"], 200);
    let content = exchange["request"]["body"]["json"]["messages"][1]["content"]
        .as_str()
        .expect("the recorded request body is JSON with the prompt");

    assert!(content.len() > 4 * 1024 * 1024, "{} bytes", content.len());
    assert_eq!(content.chars().count() as u64, prompt_chars);
    assert_eq!(sha256_hex(content), prompt_sha256, "recorded prompt hash");
    assert!(
        content == received,
        "the recorded prompt differs from what the provider received"
    );
    assert_eq!(
        exchange["request"]["body"]["json"], served[0].body,
        "the whole request body"
    );
    served[0].assert_recorded_as_sent(exchange);
    let nonce = served[0].nonce.as_deref().expect("answer nonce");
    assert!(exchange["response"]["body"].to_string().contains(nonce));

    assert_summary_matches_disk(&finished, out.path());
    assert!(figure(&finished.summary, "bytes_written") > 4 * 1024 * 1024);
}
