//! 200 requests at once from one asyncio process (the official SDK's `AsyncOpenAI`, one TLS
//! connection each, every third one streamed): the kernel drops no event, and every exchange is
//! recorded whole, each answer under its own request.

mod capture_support;

use capture_support::{Agent, assert_summary_matches_disk, command_args, exchanges};
use llmsim_tests::{ClientReport, FakeProvider, TestCa, TestNetns, find_nonce, privileged};
use serde_json::Value;

const REQUESTS: usize = 200;

#[test]
fn two_hundred_concurrent_requests_are_all_recorded_with_no_drops() {
    if !privileged("capture of 200 concurrent requests") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");

    let agent = Agent::spawn_with(
        out.path(),
        &ca,
        &command_args(&netns, "openai_concurrent.py"),
        |cmd| {
            cmd.env("LLMSIM_REQUESTS", REQUESTS.to_string());
        },
    );
    agent.wait_started();
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());
    let report: Value = serde_json::from_str(finished.command_stdout().join("\n").trim())
        .unwrap_or_else(|e| panic!("client report ({e})\n{}", finished.dump()));
    let report = ClientReport::from_json(&report).expect("client report shape");
    assert_eq!(report.results.len(), REQUESTS);
    assert_eq!(provider.requests().len(), REQUESTS);

    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), REQUESTS, "{}", finished.dump());
    // Each answer was recorded with the request that asked for it.
    let by_nonce: std::collections::HashMap<String, &Value> = recorded
        .iter()
        .map(|e| {
            let text = e["response"]["body"].to_string();
            (find_nonce(&text).expect("recorded nonce"), e)
        })
        .collect();
    for result in &report.results {
        let index = result.raw["index"].as_u64().expect("index");
        let nonce = find_nonce(result.text.as_deref().unwrap_or_default()).expect("nonce");
        let exchange = by_nonce
            .get(&nonce)
            .unwrap_or_else(|| panic!("request {index}'s answer {nonce} was not recorded"));
        let asked = exchange["request"]["body"]["json"]["messages"][0]["content"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(asked, format!("Say hello to concurrent request {index}."));
        provider
            .request_with_nonce(&nonce)
            .assert_recorded_as_sent(exchange);
        assert_eq!(exchange["streamed"], result.stream);
        assert!(exchange["incomplete"].is_null(), "{exchange:#}");
    }
    assert_summary_matches_disk(&finished, out.path());
}
