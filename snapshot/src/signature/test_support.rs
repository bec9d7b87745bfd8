//! Requests shared by the signature module's unit tests.

use serde_json::{Value, json};

use super::{Body, CompiledRules, MatchRules, Signature};

/// The default rules, compiled.
pub(super) fn rules() -> CompiledRules {
    MatchRules::default().compile().unwrap()
}

/// A chat completions request to `api.openai.com` with `body`.
pub(super) fn sig(body: &Value, rules: &CompiledRules) -> Signature {
    Signature::of(
        "POST",
        "api.openai.com",
        "/v1/chat/completions",
        Body::Json(body),
        rules,
    )
}

/// A one-message chat completions body.
pub(super) fn chat(prompt: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.7,
    })
}

/// A chat completions body with `turns` tool calls and their results, each result
/// carrying a timestamp.
pub(super) fn tool_turns(ids: [&str; 2], timestamps: [&str; 2], turns: usize) -> Value {
    let mut messages =
        vec![json!({"role": "user", "content": "what time is it in Paris and Tokyo?"})];
    for turn in 0..turns {
        messages.push(json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": ids[turn],
                "type": "function",
                "function": {"name": "clock", "arguments": format!("{{\"city\":{turn}}}")},
            }],
        }));
        messages.push(json!({
            "role": "tool",
            "tool_call_id": ids[turn],
            "content": format!("{{\"time\":\"{}\",\"ok\":true}}", timestamps[turn]),
        }));
    }
    json!({"model": "gpt-4o-mini", "messages": messages, "tools": [{"type": "function", "function": {"name": "clock"}}]})
}
