//! End-to-end capture and offline replay of each provider's official SDK, streamed: the
//! `anthropic` SDK running a tool-use agent loop, the `google-genai` SDK's
//! `streamGenerateContent` with `alt=sse`, and the `openai` SDK's Responses API (plain and
//! streamed). Each client is recorded against the fake provider by `llmsim-agent capture`, then
//! replayed by `replayd -- CMD` in a network namespace with no network, no hosts mapping and no
//! test CA: every request must be served from the recording (no misses, no repeats) and the
//! client must see exactly the recorded answers (the fake provider's fresh nonces prove where they
//! came from). The recording's `report --json` must carry the token counts the fake provider
//! reported and the cost they make.

use llmsim_tests::{
    ClientRun, ProviderRequest,
    flows::{Recording, assert_report_matches_provider, record_client, replay_client},
    privileged,
};

/// Records `client`, checks the recording's report against the provider, replays it offline
/// and checks the replay served every call from the recording with identical answers.
/// Returns the recording.
fn capture_and_replay(client: &str, provider: &str, expected_calls: usize) -> Recording {
    let snapshot = tempfile::tempdir().expect("tempdir");
    let recording = record_client(client, &[], snapshot.path());
    check_recording(&recording, provider, expected_calls);
    assert_report_matches_provider(snapshot.path(), &recording.served, provider);

    let output = replay_client(snapshot.path(), &["--repeat", "fail"], client, &[]);
    assert!(output.status.success(), "replay failed:\n{output}");
    let report = &output.stderr;
    assert!(
        report.contains(&format!(
            "served {expected_calls} requests (0 repeats), 0 misses"
        )),
        "replay report:\n{output}"
    );
    let replayed = ClientRun::finish(output);
    assert_eq!(
        replayed.answers(),
        recording.run.answers(),
        "replayed answers differ from the recorded ones"
    );
    assert_replay_report(&replayed.output.stderr, provider, &recording.served);
    recording
}

/// The recorded run made `expected_calls` calls of `provider`, each answered with a fresh
/// nonce that the client saw.
fn check_recording(recording: &Recording, provider: &str, expected_calls: usize) {
    let results = &recording.run.report.results;
    assert_eq!(results.len(), expected_calls, "{}", recording.run.output);
    assert_eq!(
        recording.served.len(),
        expected_calls,
        "{}",
        recording.run.output
    );
    for (result, request) in results.iter().zip(&recording.served) {
        assert_eq!(request.provider, provider, "{}", request.path);
        assert_eq!(request.status, 200, "{}", request.path);
        assert_eq!(result.stream, request.stream, "{}", request.path);
        let nonce = request.nonce.as_deref().expect("every answer has a nonce");
        assert_eq!(
            result.nonce().as_deref(),
            Some(nonce),
            "the client saw the answer the provider logged for {}",
            request.path
        );
        let usage = result.usage.expect("the SDK reported usage");
        assert_eq!(Some(usage), request.usage, "{}", request.path);
    }
}

/// replayd's end-of-run report counts the served calls per provider and the tokens not spent.
fn assert_replay_report(stderr: &str, provider: &str, served: &[ProviderRequest]) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("replayd: not spent:"))
        .unwrap_or_else(|| panic!("no 'not spent' line in the replay report:\n{stderr}"));
    let input: u64 = served
        .iter()
        .filter_map(|r| r.usage)
        .map(|u| u.input_tokens)
        .sum();
    let output: u64 = served
        .iter()
        .filter_map(|r| r.usage)
        .map(|u| u.output_tokens)
        .sum();
    // Token counts here stay below 1,000, so no thousands separators.
    let expected = format!(
        "not spent: {} calls, {input} input tokens, {output} output tokens, $",
        served.len()
    );
    assert!(
        line.contains(&expected),
        "the replay report's totals should read {expected:?}:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("replayd:   ") && l.contains(provider)),
        "no served row for {provider}:\n{stderr}"
    );
}

#[test]
fn anthropic_streamed_tool_loop_replays_offline_and_reports_its_usage() {
    if !privileged("capture and replay of an anthropic-python tool loop") {
        return;
    }
    let recording = capture_and_replay("anthropic_tool_loop.py", "anthropic", 6);
    let results = &recording.run.report.results;
    // Three tool_use turns, each followed by the answer to its tool_result, in one growing
    // conversation; the last answer is the final one.
    for (i, (result, request)) in results.iter().zip(&recording.served).enumerate() {
        assert!(result.stream && request.stream, "call {i} streamed");
        let messages = request.body["messages"].as_array().expect("messages");
        assert_eq!(
            messages.len(),
            2 * i + 1,
            "call {i} carries the conversation so far"
        );
        if i % 2 == 0 {
            assert_eq!(
                result.finish_reason.as_deref(),
                Some("tool_use"),
                "call {i}"
            );
            assert_eq!(
                result.tool_call["id"], request.tool_call["id"],
                "call {i}: the SDK saw the streamed tool_use id"
            );
            assert_eq!(
                result.tool_call["arguments"], request.tool_call["input"],
                "call {i}: the SDK rebuilt the streamed tool input"
            );
        } else {
            assert_eq!(
                result.finish_reason.as_deref(),
                Some("end_turn"),
                "call {i}"
            );
            let tool_result = &messages[2 * i]["content"][0];
            assert_eq!(tool_result["type"], "tool_result", "call {i}");
            assert_eq!(
                tool_result["tool_use_id"],
                results[i - 1].tool_call["id"],
                "call {i} answers the previous tool_use"
            );
        }
    }
    assert!(
        results.last().and_then(|r| r.text.as_deref()).is_some(),
        "the loop ends with a final answer"
    );
}

#[test]
fn google_genai_streamed_replays_offline_and_reports_its_usage() {
    if !privileged("capture and replay of google-genai streaming") {
        return;
    }
    let recording = capture_and_replay("gemini_stream.py", "gemini", 3);
    for request in &recording.served {
        assert!(
            request.path.contains(":streamGenerateContent") && request.path.contains("alt=sse"),
            "streamed with SSE: {}",
            request.path
        );
        assert_eq!(
            request.response_header("content-type"),
            Some("text/event-stream"),
            "{}",
            request.path
        );
    }
    assert!(
        recording.run.report.results[1].tool_call["name"] == "get_weather",
        "the second call streamed a function call: {:#}",
        recording.run.report.results[1].raw
    );
}

#[test]
fn openai_responses_plain_and_streamed_replay_offline_and_report_their_usage() {
    if !privileged("capture and replay of the openai-python Responses API") {
        return;
    }
    let recording = capture_and_replay("openai_responses_stream.py", "openai", 4);
    let streamed: Vec<bool> = recording.served.iter().map(|r| r.stream).collect();
    assert_eq!(streamed, [false, true, true, true]);
    for request in &recording.served {
        assert_eq!(request.endpoint.as_deref(), Some("openai.responses"));
    }
    let call_id = &recording.run.report.results[2].tool_call["id"];
    assert!(
        call_id.as_str().is_some_and(|id| id.starts_with("call_")),
        "a function call: {call_id}"
    );
    let last_input = recording.served[3].body["input"]
        .as_array()
        .expect("input items");
    assert!(
        last_input
            .iter()
            .any(|item| item["type"] == "function_call_output" && &item["call_id"] == call_id),
        "the last call sends the function's output back"
    );
}
