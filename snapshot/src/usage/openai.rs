//! `OpenAI` wire formats, also spoken by xAI, `OpenRouter`, Azure `OpenAI`,
//! Ollama, vLLM and other compatible servers: chat completions (a
//! `chat.completion` body, or `chat.completion.chunk` events whose last one
//! carries `usage` when the request set `stream_options.include_usage`), the
//! Responses API (a `response` body, or `response.*` events ending in
//! `response.completed`) and embeddings.

use serde_json::Value;

use super::{Acc, count, non_empty_str, str_at};

/// One chat completion body or chunk; `true` when it carried content.
pub(super) fn chat(acc: &mut Acc, doc: &Value) -> bool {
    acc.set_model(doc, "model");
    if let Some(usage) = doc.get("usage").filter(|u| u.is_object()) {
        acc.input = count(usage.get("prompt_tokens")).or(acc.input);
        acc.output = count(usage.get("completion_tokens")).or(acc.output);
        if let Some(cached) = count(usage.pointer("/prompt_tokens_details/cached_tokens")) {
            acc.cached = Some(cached);
        }
        if let Some(reasoning) = count(usage.pointer("/completion_tokens_details/reasoning_tokens"))
        {
            acc.reasoning = Some(reasoning);
        }
        reasoning_outside_completion(acc, usage);
    }
    let mut content = false;
    let choices = doc.get("choices").and_then(Value::as_array);
    for (position, choice) in choices.into_iter().flatten().enumerate() {
        let index = count(choice.get("index")).unwrap_or(position as u64);
        if let Some(reason) = str_at(choice, "finish_reason")
            && (index == 0 || acc.stop_reason.is_none())
        {
            acc.stop_reason = Some(reason.to_owned());
        }
        if let Some(message) = choice.get("message") {
            content |= ["content", "refusal", "reasoning_content", "reasoning"]
                .iter()
                .any(|k| non_empty_str(message.get(*k)));
            content |= acc.push_message_tool_calls(message);
        }
        if let Some(delta) = choice.get("delta") {
            content |= ["content", "refusal", "reasoning_content", "reasoning"]
                .iter()
                .any(|k| non_empty_str(delta.get(*k)));
            for (n, call) in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                content = true;
                tool_delta(
                    acc,
                    index,
                    count(call.get("index")).unwrap_or(n as u64),
                    call,
                );
            }
        }
    }
    content
}

/// `OpenAI` counts reasoning inside `completion_tokens`; some compatible
/// servers (xAI) count it beside, which `total_tokens` then shows: prompt +
/// completion + reasoning. Output is all generated tokens either way.
fn reasoning_outside_completion(acc: &mut Acc, usage: &Value) {
    let (Some(prompt), Some(completion), Some(reasoning), Some(total)) = (
        count(usage.get("prompt_tokens")),
        count(usage.get("completion_tokens")),
        count(usage.pointer("/completion_tokens_details/reasoning_tokens")),
        count(usage.get("total_tokens")),
    ) else {
        return;
    };
    if reasoning > 0
        && prompt
            .checked_add(completion)
            .and_then(|n| n.checked_add(reasoning))
            == Some(total)
    {
        acc.output = Some(completion + reasoning);
    }
}

/// A streamed tool call arrives in pieces: the first names it and gives its
/// id, later ones only add to the arguments.
fn tool_delta(acc: &mut Acc, choice: u64, index: u64, call: &Value) {
    let id = str_at(call, "id").filter(|s| !s.is_empty());
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let slot = match acc.tool_slots.get(&(choice, index)) {
        // A new id at a used index starts a new call (some servers reuse 0).
        Some(&slot) if id.is_none() || acc.tool_calls[slot].id.as_deref() == id => slot,
        _ if id.is_none() && name.is_none() => return,
        _ => {
            acc.push_tool(None, None);
            let slot = acc.tool_calls.len() - 1;
            acc.tool_slots.insert((choice, index), slot);
            slot
        }
    };
    let call = &mut acc.tool_calls[slot];
    if let Some(id) = id {
        call.id = Some(id.to_owned());
    }
    if let Some(name) = name
        && call.name.is_empty()
    {
        name.clone_into(&mut call.name);
    }
}

/// One Responses API body or event; `true` when it carried content.
pub(super) fn responses(acc: &mut Acc, doc: &Value) -> bool {
    let kind = str_at(doc, "type").unwrap_or("");
    if str_at(doc, "object") == Some("response") {
        response(acc, doc);
        return doc
            .get("output")
            .and_then(Value::as_array)
            .is_some_and(|o| !o.is_empty());
    }
    if let Some(r) = doc.get("response").filter(|r| r.is_object()) {
        response(acc, r);
    }
    // `response.output_text.delta`, `response.function_call_arguments.delta`,
    // `response.reasoning_summary_text.delta`, `response.refusal.delta`, ...
    kind.starts_with("response.")
        && kind.rsplit('.').next() == Some("delta")
        && non_empty_str(doc.get("delta"))
}

/// A whole `response` object: in a body, or in `response.created`,
/// `response.completed`, `response.incomplete` and `response.failed` events.
fn response(acc: &mut Acc, r: &Value) {
    acc.set_model(r, "model");
    if let Some(usage) = r.get("usage").filter(|u| u.is_object()) {
        acc.input = count(usage.get("input_tokens")).or(acc.input);
        acc.output = count(usage.get("output_tokens")).or(acc.output);
        if let Some(cached) = count(usage.pointer("/input_tokens_details/cached_tokens")) {
            acc.cached = Some(cached);
        }
        if let Some(reasoning) = count(usage.pointer("/output_tokens_details/reasoning_tokens")) {
            acc.reasoning = Some(reasoning);
        }
    }
    match str_at(r, "status") {
        Some("incomplete") => {
            let reason = r
                .pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
                .unwrap_or("incomplete");
            acc.stop_reason = Some(reason.to_owned());
        }
        Some(status) if !matches!(status, "in_progress" | "queued") => {
            acc.stop_reason = Some(status.to_owned());
        }
        _ => {}
    }
    let Some(output) = r.get("output").and_then(Value::as_array) else {
        return;
    };
    if output.is_empty() {
        return;
    }
    // The final response lists every output item: it replaces what earlier
    // events said.
    acc.tool_calls.clear();
    for item in output {
        let kind = str_at(item, "type").unwrap_or("");
        match kind {
            "function_call" | "custom_tool_call" => {
                acc.push_tool(str_at(item, "call_id"), str_at(item, "name"));
            }
            "mcp_call" => acc.push_tool(str_at(item, "id"), str_at(item, "name")),
            _ => {
                // Built-in tools: web_search_call, file_search_call,
                // code_interpreter_call, computer_call, image_generation_call.
                if let Some(tool) = kind.strip_suffix("_call") {
                    acc.push_tool(str_at(item, "id"), Some(tool));
                }
            }
        }
    }
}

/// An embeddings body: input tokens only.
pub(super) fn embeddings(acc: &mut Acc, doc: &Value) -> bool {
    acc.set_model(doc, "model");
    if let Some(usage) = doc.get("usage").filter(|u| u.is_object())
        && let Some(input) = count(usage.get("prompt_tokens")).or(count(usage.get("total_tokens")))
    {
        acc.input = Some(input);
        acc.output = Some(0);
    }
    false
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::model::{TokenUsage, ToolCall};
    use crate::usage::tests::{exchange, json_body, sse_body, summary};

    #[test]
    fn chat_completion_body() {
        let body = json!({
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion",
            "created": 1_741_569_952,
            "model": "gpt-4o-2024-08-06",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I assist you today?", "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 1_117,
                "completion_tokens": 90,
                "total_tokens": 1_207,
                "prompt_tokens_details": {"cached_tokens": 1_024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fc9f1d7035"
        });
        let ex = exchange(
            "api.openai.com",
            "/v1/chat/completions",
            json!({"model": "gpt-4o"}),
            json_body(body),
            300.0,
            900.0,
        );
        let s = summary(&ex);
        assert_eq!(s.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert!(!s.streamed);
        assert_eq!(
            s.usage,
            Some(TokenUsage {
                input_tokens: 1_117,
                output_tokens: 90,
                cached_input_tokens: 1_024,
                cache_write_tokens: 0,
                reasoning_tokens: 64
            })
        );
        assert_eq!(s.stop_reason.as_deref(), Some("stop"));
        assert_eq!(s.ttft_ms, Some(300.0));
        assert_eq!(s.tokens_per_second, Some(100.0));
        assert_eq!(s.tool_calls, Vec::<ToolCall>::new());
    }

    #[test]
    fn reasoning_counted_beside_completion_is_output_too() {
        let usage = |completion: u64, total: u64| {
            json!({"object": "chat.completion", "model": "grok-3-mini", "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": total,
                    "completion_tokens_details": {"reasoning_tokens": 300}}})
        };
        let output = |body| {
            let ex = exchange(
                "api.x.ai",
                "/v1/chat/completions",
                json!({}),
                json_body(body),
                1.0,
                2.0,
            );
            summary(&ex)
                .usage
                .map(|u| (u.output_tokens, u.reasoning_tokens))
        };
        // xAI: total = prompt + completion + reasoning.
        assert_eq!(output(usage(20, 330)), Some((320, 300)));
        // OpenAI: reasoning is inside completion.
        assert_eq!(output(usage(320, 330)), Some((320, 300)));
    }

    #[test]
    fn chat_tool_call_body() {
        let body = json!({
            "id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null, "annotations": [],
                "tool_calls": [{"id": "call_KQ2bOIRyd0V6Gn5mGrGyXqJs", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99}
        });
        let ex = exchange(
            "api.openai.com",
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini"}),
            json_body(body),
            200.0,
            400.0,
        );
        let s = summary(&ex);
        assert_eq!(
            s.tool_calls,
            [ToolCall {
                id: Some("call_KQ2bOIRyd0V6Gn5mGrGyXqJs".into()),
                name: "get_weather".into()
            }]
        );
        assert_eq!(s.stop_reason.as_deref(), Some("tool_calls"));
        assert_eq!(s.usage.unwrap().cached_input_tokens, 0);
    }

    /// The chunks openai-python reads with `stream_options.include_usage`,
    /// as our fake provider and the real API send them.
    #[test]
    fn chat_stream_with_final_usage_chunk() {
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                "service_tier": "default", "system_fingerprint": "fp_1",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null})
        };
        let last = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
            "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}});
        let events = vec![
            (
                210.0,
                None,
                chunk(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    json!(null),
                )
                .to_string(),
            ),
            (
                250.0,
                None,
                chunk(json!({"content": "Hello "}), json!(null)).to_string(),
            ),
            (
                270.0,
                None,
                chunk(json!({"content": "there"}), json!(null)).to_string(),
            ),
            (290.0, None, chunk(json!({}), json!("stop")).to_string()),
            (291.0, None, last.to_string()),
            (291.0, None, "[DONE]".to_owned()),
        ];
        let ex = exchange(
            "api.openai.com",
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}}),
            sse_body(&events),
            210.0,
            450.0,
        );
        let s = summary(&ex);
        assert!(s.streamed);
        assert_eq!(
            s.ttft_ms,
            Some(250.0),
            "the role-only first chunk carries no content"
        );
        assert_eq!(
            s.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((9, 4))
        );
        assert_eq!(s.stop_reason.as_deref(), Some("stop"));
        assert_eq!(s.tokens_per_second, Some(20.0), "4 tokens over 200 ms");
    }

    #[test]
    fn chat_stream_without_usage_and_with_tool_call_deltas() {
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "grok-3-mini",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string()
        };
        let events = vec![
            (
                100.0,
                None,
                chunk(
                    json!({"role": "assistant", "content": null, "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": ""}}]}),
                    json!(null),
                ),
            ),
            (
                110.0,
                None,
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}),
                    json!(null),
                ),
            ),
            (
                120.0,
                None,
                chunk(
                    json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "fetch", "arguments": ""}}]}),
                    json!(null),
                ),
            ),
            (
                130.0,
                None,
                chunk(
                    json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
                    json!(null),
                ),
            ),
            (140.0, None, chunk(json!({}), json!("tool_calls"))),
            (141.0, None, "[DONE]".to_owned()),
        ];
        let ex = exchange(
            "api.x.ai",
            "/v1/chat/completions",
            json!({"model": "grok-3-mini", "stream": true}),
            sse_body(&events),
            100.0,
            141.0,
        );
        let s = summary(&ex);
        assert_eq!(s.usage, None);
        assert_eq!(s.tokens_per_second, None);
        assert_eq!(s.ttft_ms, Some(100.0));
        assert_eq!(
            s.tool_calls,
            [
                ToolCall {
                    id: Some("call_a".into()),
                    name: "lookup".into()
                },
                ToolCall {
                    id: Some("call_b".into()),
                    name: "fetch".into()
                }
            ]
        );
        assert_eq!(s.stop_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn openrouter_and_generic_hosts_read_like_openai() {
        let body = json!({"id": "gen-1", "provider": "Anthropic", "model": "anthropic/claude-3.5-sonnet", "object": "chat.completion",
            "created": 1, "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "end_turn",
            "message": {"role": "assistant", "content": "Hi"}}],
            "usage": {"prompt_tokens": 14, "completion_tokens": 4, "total_tokens": 18}});
        let ex = exchange(
            "openrouter.ai",
            "/api/v1/chat/completions",
            json!({"model": "anthropic/claude-3.5-sonnet"}),
            json_body(body.clone()),
            50.0,
            100.0,
        );
        assert_eq!(summary(&ex).usage.map(|u| u.total()), Some(18));
        // An Ollama-style server on a path no provider uses is sniffed by shape.
        let ex = exchange(
            "localhost",
            "/custom/generate",
            json!({"model": "llama3"}),
            json_body(body),
            50.0,
            100.0,
        );
        let s = summary(&ex);
        assert_eq!(s.endpoint, crate::provider::Endpoint::ChatCompletions);
        assert_eq!(s.usage.map(|u| u.input_tokens), Some(14));
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "a test builder called with temporaries"
    )]
    fn response_object(
        status: &str,
        output: serde_json::Value,
        usage: serde_json::Value,
    ) -> serde_json::Value {
        json!({"id": "resp_67ccd2bed1ec8190b14f964abc054267", "object": "response", "created_at": 1_741_476_542,
            "status": status, "error": null, "incomplete_details": null, "model": "gpt-4.1-2025-04-14",
            "output": output, "parallel_tool_calls": true, "usage": usage})
    }

    #[test]
    fn responses_body_with_function_call() {
        let output = json!([
            {"id": "rs_1", "type": "reasoning", "summary": []},
            {"id": "fc_12345xyz", "type": "function_call", "status": "completed", "arguments": "{\"location\":\"Paris\"}",
             "call_id": "call_12345xyz", "name": "get_weather"}
        ]);
        let usage = json!({"input_tokens": 291, "input_tokens_details": {"cached_tokens": 128},
            "output_tokens": 23, "output_tokens_details": {"reasoning_tokens": 7}, "total_tokens": 314});
        let ex = exchange(
            "api.openai.com",
            "/v1/responses",
            json!({"model": "gpt-4.1"}),
            json_body(response_object("completed", output, usage)),
            500.0,
            700.0,
        );
        let s = summary(&ex);
        assert_eq!(s.model.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!(
            s.usage,
            Some(TokenUsage {
                input_tokens: 291,
                output_tokens: 23,
                cached_input_tokens: 128,
                cache_write_tokens: 0,
                reasoning_tokens: 7
            })
        );
        assert_eq!(s.stop_reason.as_deref(), Some("completed"));
        assert_eq!(
            s.tool_calls,
            [ToolCall {
                id: Some("call_12345xyz".into()),
                name: "get_weather".into()
            }]
        );
    }

    #[test]
    fn responses_stream_reads_the_completed_event() {
        let ev = |kind: &str, extra: serde_json::Value| {
            let mut obj = json!({"type": kind, "sequence_number": 0});
            obj.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            obj.to_string()
        };
        let item = json!({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "text": "Hi there"}]});
        let usage = json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14});
        let events = vec![
            (
                80.0,
                Some("response.created"),
                ev(
                    "response.created",
                    json!({"response": response_object("in_progress", json!([]), json!(null))}),
                ),
            ),
            (
                81.0,
                Some("response.in_progress"),
                ev(
                    "response.in_progress",
                    json!({"response": response_object("in_progress", json!([]), json!(null))}),
                ),
            ),
            (
                90.0,
                Some("response.output_item.added"),
                ev(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": {"id": "msg_1", "type": "message", "content": []}}),
                ),
            ),
            (
                120.0,
                Some("response.output_text.delta"),
                ev(
                    "response.output_text.delta",
                    json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hi "}),
                ),
            ),
            (
                140.0,
                Some("response.output_text.delta"),
                ev(
                    "response.output_text.delta",
                    json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "there"}),
                ),
            ),
            (
                150.0,
                Some("response.output_text.done"),
                ev("response.output_text.done", json!({"text": "Hi there"})),
            ),
            (
                160.0,
                Some("response.completed"),
                ev(
                    "response.completed",
                    json!({"response": response_object("completed", json!([item]), usage)}),
                ),
            ),
        ];
        let events: Vec<_> = events
            .into_iter()
            .map(|(t, e, d)| (t, e.map(str::to_owned), d))
            .collect();
        let ex = exchange(
            "api.openai.com",
            "/v1/responses",
            json!({"model": "gpt-4.1", "stream": true}),
            crate::usage::tests::sse_named(&events),
            80.0,
            220.0,
        );
        let s = summary(&ex);
        assert_eq!(s.ttft_ms, Some(120.0));
        assert_eq!(
            s.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((12, 2))
        );
        assert_eq!(s.stop_reason.as_deref(), Some("completed"));
        assert_eq!(s.tool_calls, Vec::<ToolCall>::new());
        assert_eq!(s.tokens_per_second, Some(20.0));
    }

    #[test]
    fn responses_incomplete_says_why() {
        let mut r = response_object(
            "incomplete",
            json!([]),
            json!({"input_tokens": 5, "output_tokens": 100}),
        );
        r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        let ex = exchange(
            "api.openai.com",
            "/v1/responses",
            json!({}),
            json_body(r),
            1.0,
            2.0,
        );
        assert_eq!(
            summary(&ex).stop_reason.as_deref(),
            Some("max_output_tokens")
        );
    }

    #[test]
    fn embeddings_count_input_only() {
        let body = json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093]}],
            "model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}});
        let ex = exchange(
            "api.openai.com",
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "x"}),
            json_body(body),
            40.0,
            45.0,
        );
        let s = summary(&ex);
        assert_eq!(
            s.usage,
            Some(TokenUsage {
                input_tokens: 8,
                ..TokenUsage::default()
            })
        );
        assert_eq!(s.ttft_ms, None);
        assert_eq!(s.tokens_per_second, None);
    }
}
