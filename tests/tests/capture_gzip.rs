//! A gzip-encoded response (the fake provider's `--gzip`, for clients that accept it, as
//! openai-python does) is stored decoded, as the JSON document it is, with the encoding noted;
//! the streamed response of the same run is not encoded and is stored as its events.

mod capture_support;

use capture_support::{Agent, assert_summary_matches_disk, command_args, exchanges};
use llmsim_tests::{FakeProvider, FakeProviderConfig, TestCa, TestNetns, privileged};
use serde_json::Value;

#[test]
fn a_gzip_response_is_stored_decoded_with_its_encoding_noted() {
    if !privileged("capture of a gzip response") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let config = FakeProviderConfig {
        gzip: true,
        ..FakeProviderConfig::default()
    };
    let provider = FakeProvider::start_with(&netns, &ca, &config);
    let out = tempfile::tempdir().expect("tempdir");

    let finished = Agent::start(out.path(), &ca, &command_args(&netns, "openai_chat.py")).finish();
    assert!(finished.status.success(), "{}", finished.dump());

    let served = provider.requests();
    assert_eq!(served.len(), 2);
    assert_eq!(
        served[0].raw["response_gzip"], true,
        "the provider gzipped the plain answer"
    );
    assert_eq!(
        served[1].raw["response_gzip"], false,
        "streams are not gzipped"
    );

    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    let plain = &recorded[0];
    assert!(plain["incomplete"].is_null(), "{plain:#}");
    let body = &plain["response"]["body"];
    assert_eq!(body["kind"], "json", "{body:#}");
    assert_eq!(body["content_encoding"], "gzip", "{body:#}");
    let sent: Value = serde_json::from_str(&served[0].response_body).expect("provider JSON");
    assert_eq!(
        body["json"], sent,
        "the decoded body is what the provider sent"
    );
    for (exchange, request) in recorded.iter().zip(&served) {
        request.assert_recorded_as_sent(exchange);
    }
    // Headers are stored as [name, value] pairs, as sent.
    let encoding = plain["response"]["headers"]
        .as_array()
        .expect("header pairs")
        .iter()
        .find(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|name| name.eq_ignore_ascii_case("content-encoding"))
        })
        .map(|pair| pair[1].clone());
    assert_eq!(encoding, Some(Value::from("gzip")), "{plain:#}");

    let streamed = &recorded[1];
    assert_eq!(streamed["response"]["body"]["kind"], "sse");
    assert!(streamed["response"]["body"]["content_encoding"].is_null());
    assert_summary_matches_disk(&finished, out.path());
}
