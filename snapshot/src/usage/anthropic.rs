//! Anthropic Messages: a `message` body, or the stream `message_start`
//! (model and input usage), `content_block_start` / `content_block_delta`
//! (text, thinking, `tool_use` blocks), `message_delta` (stop reason and the
//! running output count) and `message_stop`. Anthropic counts cache reads
//! and writes apart from `input_tokens`.

use serde_json::Value;

use super::{Acc, count, non_empty_str, str_at};

/// One Messages body or stream event; `true` when it carried content.
pub(super) fn messages(acc: &mut Acc, doc: &Value) -> bool {
    acc.input_excludes_cache = true;
    match str_at(doc, "type").unwrap_or("") {
        "message" => {
            message(acc, doc);
            let content = doc.get("content").and_then(Value::as_array);
            for block in content.into_iter().flatten() {
                tool_block(acc, block);
            }
            content.is_some_and(|c| !c.is_empty())
        }
        "message_start" => {
            if let Some(m) = doc.get("message") {
                message(acc, m);
            }
            false
        }
        "message_delta" => {
            if let Some(reason) = doc.pointer("/delta/stop_reason").and_then(Value::as_str) {
                acc.stop_reason = Some(reason.to_owned());
            }
            if let Some(usage) = doc.get("usage") {
                usage_counts(acc, usage);
            }
            false
        }
        "content_block_start" => doc
            .get("content_block")
            .is_some_and(|block| tool_block(acc, block) || non_empty_str(block.get("text"))),
        "content_block_delta" => doc.get("delta").is_some_and(|delta| {
            ["text", "partial_json", "thinking"]
                .iter()
                .any(|k| non_empty_str(delta.get(*k)))
        }),
        _ => false,
    }
}

/// A `message` object: a whole body, or `message_start`'s.
fn message(acc: &mut Acc, m: &Value) {
    acc.set_model(m, "model");
    if let Some(reason) = str_at(m, "stop_reason") {
        acc.stop_reason = Some(reason.to_owned());
    }
    if let Some(usage) = m.get("usage") {
        usage_counts(acc, usage);
    }
}

/// `usage` in a message or a `message_delta`: running totals, so each one
/// present replaces the last.
fn usage_counts(acc: &mut Acc, usage: &Value) {
    acc.input = count(usage.get("input_tokens")).or(acc.input);
    acc.output = count(usage.get("output_tokens")).or(acc.output);
    acc.cached = count(usage.get("cache_read_input_tokens")).or(acc.cached);
    acc.cache_write = count(usage.get("cache_creation_input_tokens")).or(acc.cache_write);
}

/// Records a `tool_use` (or server tool) block; `true` when it was one.
fn tool_block(acc: &mut Acc, block: &Value) -> bool {
    match str_at(block, "type") {
        Some("tool_use" | "server_tool_use" | "mcp_tool_use") => {
            acc.push_tool(str_at(block, "id"), str_at(block, "name"));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::model::{TokenUsage, ToolCall};
    use crate::usage::tests::{exchange, json_body, sse_named, summary};

    #[test]
    fn message_body_with_cache_and_tool_use() {
        let body = json!({
            "id": "msg_01Aq9w938a90dw8q", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "text", "text": "I'll check the weather."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 50, "cache_creation_input_tokens": 1_000, "cache_read_input_tokens": 2_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 40, "service_tier": "standard"}
        });
        let ex = exchange(
            "api.anthropic.com",
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5"}),
            json_body(body),
            800.0,
            1_200.0,
        );
        let s = summary(&ex);
        assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(
            s.usage,
            Some(TokenUsage {
                input_tokens: 3_050,
                output_tokens: 40,
                cached_input_tokens: 2_000,
                cache_write_tokens: 1_000,
                reasoning_tokens: 0
            })
        );
        assert_eq!(s.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(
            s.tool_calls,
            [ToolCall {
                id: Some("toolu_01A09q90qw90lq917835lq9".into()),
                name: "get_weather".into()
            }]
        );
        assert_eq!(s.ttft_ms, Some(800.0));
    }

    /// The event sequence of a streamed tool call, as the real API and our
    /// fake provider send it (ping included).
    #[test]
    fn stream_with_tool_use() {
        let e = |t: f64, name: &str, data: serde_json::Value| {
            (t, Some(name.to_owned()), data.to_string())
        };
        let events = vec![
            e(
                300.0,
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
                "model": "claude-haiku-4-5-20251001", "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100, "output_tokens": 1, "service_tier": "standard"}}}),
            ),
            e(
                301.0,
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}}),
            ),
            e(302.0, "ping", json!({"type": "ping"})),
            e(
                303.0,
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            e(
                350.0,
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"location\": \"Paris\"}"}}),
            ),
            e(
                360.0,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            e(
                361.0,
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
            ),
            e(362.0, "message_stop", json!({"type": "message_stop"})),
        ];
        let ex = exchange(
            "api.anthropic.com",
            "/v1/messages",
            json!({"model": "claude-haiku-4-5", "stream": true}),
            sse_named(&events),
            300.0,
            362.0,
        );
        let s = summary(&ex);
        assert!(s.streamed);
        assert_eq!(
            s.ttft_ms,
            Some(301.0),
            "the tool_use block start is the first content"
        );
        assert_eq!(
            s.usage,
            Some(TokenUsage {
                input_tokens: 572,
                output_tokens: 89,
                cached_input_tokens: 100,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            })
        );
        assert_eq!(s.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(s.tool_calls.len(), 1);
        assert_eq!(s.tool_calls[0].name, "get_weather");
    }

    #[test]
    fn text_stream_first_content_is_the_first_non_empty_delta() {
        let e = |t: f64, name: &str, data: serde_json::Value| {
            (t, Some(name.to_owned()), data.to_string())
        };
        let events = vec![
            e(
                100.0,
                "message_start",
                json!({"type": "message_start", "message": {"model": "claude-3-5-haiku-20241022",
                "usage": {"input_tokens": 25, "output_tokens": 1}}}),
            ),
            e(
                101.0,
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            e(
                140.0,
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            ),
            // Newer API versions repeat cumulative input counts here.
            e(
                190.0,
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"input_tokens": 25, "cache_read_input_tokens": 0, "output_tokens": 15}}),
            ),
        ];
        let ex = exchange(
            "api.anthropic.com",
            "/v1/messages",
            json!({"stream": true}),
            sse_named(&events),
            100.0,
            190.0,
        );
        let s = summary(&ex);
        assert_eq!(s.ttft_ms, Some(140.0));
        assert_eq!(
            s.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((25, 15))
        );
        assert_eq!(s.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(s.tokens_per_second, Some(300.0));
    }
}
