//! Smoke tests of the harness itself: the fake provider, the test CA, the network namespace and
//! the real clients work together before any llmsim binary is involved. The namespace tests need
//! root; the loopback tests run as any user.

use std::process::Command;
use std::time::{Duration, Instant};

use llmsim_tests::{
    ClientRun, FakeProvider, FakeProviderConfig, ProviderRequest, TEST_API_KEYS, TestCa, TestNetns,
    find_nonce, privileged, run_client, run_client_on_loopback, run_command,
};

fn test_key(var: &str) -> &'static str {
    TEST_API_KEYS
        .iter()
        .find(|(name, _)| *name == var)
        .map(|(_, key)| *key)
        .expect("a test key")
}

/// Every answer a client printed was served by `provider` (matched by nonce, with the same text
/// and usage); returns the matching log entries in call order.
fn assert_answers_came_from(provider: &FakeProvider, run: &ClientRun) -> Vec<ProviderRequest> {
    assert!(
        !run.report.results.is_empty(),
        "{} reported no results\n{}",
        run.report.client,
        run.output
    );
    run.report
        .results
        .iter()
        .filter(|result| result.text.is_some() || !result.tool_call.is_null())
        .map(|result| {
            let nonce = result.nonce().unwrap_or_else(|| {
                panic!(
                    "{} result without a nonce: {:?}\n{}",
                    run.report.client, result, run.output
                )
            });
            let request = provider.request_with_nonce(&nonce);
            assert_eq!(request.status, 200, "{request:?}");
            assert_eq!(result.stream, request.stream, "stream flag of {nonce}");
            if let Some(text) = &result.text
                && !text.is_empty()
            {
                assert_eq!(
                    Some(text),
                    request.answer.as_ref(),
                    "answer text of {nonce}"
                );
            }
            if let Some(usage) = result.usage {
                assert_eq!(Some(usage), request.usage, "usage of {nonce}");
            }
            request
        })
        .collect()
}

fn assert_openai_request(request: &ProviderRequest) {
    let bearer = format!("Bearer {}", test_key("OPENAI_API_KEY"));
    assert_eq!(
        request.header("authorization"),
        Some(bearer.as_str()),
        "{request:?}"
    );
    assert_eq!(
        request.host.as_deref(),
        Some("api.openai.com"),
        "{request:?}"
    );
    assert_eq!(
        request.sni.as_deref(),
        Some("api.openai.com"),
        "{request:?}"
    );
    assert_eq!(
        request.endpoint.as_deref(),
        Some("openai.chat.completions"),
        "{request:?}"
    );
}

#[test]
fn openai_python_and_node_clients_reach_the_fake_provider_in_a_netns() {
    if !privileged("harness: clients in a network namespace") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);

    for script in ["openai_chat.py", "openai_node.mjs", "node_fetch.mjs"] {
        let run = run_client(&netns, &ca, script);
        let requests = assert_answers_came_from(&provider, &run);
        assert_eq!(
            requests.len(),
            2,
            "{script}: one plain and one streamed completion\n{}",
            run.output
        );
        assert!(
            !requests[0].stream && requests[1].stream,
            "{script}: plain, then streamed"
        );
        for request in &requests {
            assert_openai_request(request);
        }
        assert_eq!(
            requests[1].body["stream_options"]["include_usage"],
            serde_json::Value::Bool(true),
            "{script} asked for usage in the stream"
        );
        assert!(
            requests[1].response_body.ends_with("data: [DONE]\n\n"),
            "{script}: SSE ends with [DONE]"
        );
    }
}

#[test]
fn anthropic_gemini_and_responses_clients_reach_the_fake_provider_in_a_netns() {
    if !privileged("harness: more SDKs in a network namespace") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);

    let run = run_client(&netns, &ca, "anthropic_messages.py");
    let requests = assert_answers_came_from(&provider, &run);
    assert_eq!(requests.len(), 4, "{}", run.output);
    for request in &requests {
        assert_eq!(request.host.as_deref(), Some("api.anthropic.com"));
        // anthropic-python 2.x sends the key as a bearer token; older SDKs used x-api-key.
        let key = test_key("ANTHROPIC_API_KEY");
        let bearer = format!("Bearer {key}");
        assert!(
            request.header("x-api-key") == Some(key)
                || request.header("authorization") == Some(bearer.as_str()),
            "{:?}",
            request.headers
        );
    }
    let tool_id = run.report.results[2].tool_call["id"]
        .as_str()
        .expect("a tool_use id");
    assert!(tool_id.starts_with("toolu_"), "{tool_id}");

    let run = run_client(&netns, &ca, "gemini_generate.py");
    let requests = assert_answers_came_from(&provider, &run);
    assert_eq!(requests.len(), 2, "{}", run.output);
    for request in &requests {
        assert_eq!(
            request.host.as_deref(),
            Some("generativelanguage.googleapis.com")
        );
        assert_eq!(
            request.header("x-goog-api-key"),
            Some(test_key("GEMINI_API_KEY"))
        );
    }
    assert!(
        requests[1].path.ends_with(":streamGenerateContent?alt=sse"),
        "{}",
        requests[1].path
    );

    let run = run_client(&netns, &ca, "openai_responses.py");
    let requests = assert_answers_came_from(&provider, &run);
    assert_eq!(requests.len(), 4, "{}", run.output);
    assert!(
        requests[1]
            .response_body
            .contains("event: response.completed"),
        "streamed Responses events"
    );
    let call_id = run.report.results[3].tool_call["id"]
        .as_str()
        .expect("a tool call id");
    assert!(call_id.starts_with("call_"), "{call_id}");
}

#[test]
fn curl_trusts_the_test_ca_in_a_netns_over_ipv4_and_ipv6() {
    if !privileged("harness: curl in a network namespace") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"one two three"}]}"#;

    for family in ["-4", "-6"] {
        let mut cmd = netns.command("curl");
        cmd.args(["-sS", family, "--cacert"])
            .arg(ca.ca_cert_path())
            .args([
                "-H",
                &format!("Authorization: Bearer {}", test_key("OPENAI_API_KEY")),
            ])
            .args(["-H", "content-type: application/json", "-d", body])
            .arg("https://api.openai.com/v1/chat/completions");
        let out = run_command(cmd, &format!("curl {family}"), Duration::from_secs(30));
        let answer = out.assert_success().json();
        let text = answer["choices"][0]["message"]["content"]
            .as_str()
            .expect("a completion");
        let request = provider.request_with_nonce(&find_nonce(text).expect("a nonce"));
        assert_eq!(answer["usage"]["prompt_tokens"], 3, "three words in");
        let expected_client = if family == "-4" { "127.0.0.1:" } else { "::1" };
        assert!(
            request.raw["client"]
                .as_str()
                .unwrap()
                .starts_with(expected_client),
            "{:?}",
            request.raw
        );
    }

    // Without credentials: OpenAI's 401 shape.
    let mut cmd = netns.command("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca.ca_cert_path())
        .args(["-d", body, "https://api.openai.com/v1/chat/completions"]);
    let out = run_command(cmd, "curl without a key", Duration::from_secs(30));
    out.assert_success();
    let (json, code) = out
        .stdout
        .trim()
        .rsplit_once('\n')
        .expect("body and status");
    assert_eq!(code, "401", "{out}");
    let error: serde_json::Value = serde_json::from_str(json).expect("a JSON error");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
}

#[test]
fn python_client_reaches_a_loopback_provider_without_root() {
    let ca = TestCa::new();
    let provider = FakeProvider::start_on_loopback(Some(&ca), &FakeProviderConfig::default());
    let run = run_client_on_loopback(&provider, &ca, "openai_chat.py");
    let requests = assert_answers_came_from(&provider, &run);
    assert_eq!(requests.len(), 2, "{}", run.output);
    let bearer = format!("Bearer {}", test_key("OPENAI_API_KEY"));
    assert_eq!(requests[0].header("Authorization"), Some(bearer.as_str()));
    // The streamed answer arrived in several chunks (one per word, plus role, finish and usage).
    let words = requests[1]
        .answer
        .as_deref()
        .unwrap()
        .split_whitespace()
        .count();
    assert_eq!(
        run.report.results[1].raw["chunks"],
        words + 3,
        "{}",
        run.output
    );
}

#[test]
fn streams_are_paced_by_the_event_delay() {
    let config = FakeProviderConfig {
        event_delay: Duration::from_millis(40),
        ..FakeProviderConfig::default()
    };
    let provider = FakeProvider::start_on_loopback(None, &config);
    let body = r#"{"model":"m","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"pace me"}]}"#;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "-H", "x-api-key: test", "-d", body])
        .arg(format!("{}/v1/messages", provider.origin()));
    let started = Instant::now();
    let out = run_command(cmd, "curl streamed messages", Duration::from_secs(30));
    let elapsed = started.elapsed();
    out.assert_success();
    let events = out.stdout.matches("\nevent: ").count() + 1;
    assert!(out.stdout.starts_with("event: message_start\n"), "{out}");
    assert!(
        out.stdout
            .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{out}"
    );
    let minimum = Duration::from_millis(40) * u32::try_from(events - 1).unwrap();
    assert!(
        elapsed >= minimum,
        "{events} events in {elapsed:?}, expected at least {minimum:?}"
    );
    let request = provider.requests().pop().expect("one request");
    assert_eq!(request.usage.map(|u| u.input_tokens), Some(2));
}
