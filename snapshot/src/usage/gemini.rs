//! Gemini `generateContent`, `streamGenerateContent` (SSE with `alt=sse`,
//! else a JSON array of the same objects) and `embedContent`: every object
//! may carry `usageMetadata` with running totals, `candidates[].finishReason`
//! and `functionCall` parts. `promptTokenCount` includes cached tokens;
//! `candidatesTokenCount` excludes thinking tokens, which are billed as
//! output.

use serde_json::Value;

use super::{Acc, count, non_empty_str, str_at};

/// One response object (a body, an SSE event or an array element); `true`
/// when it carried content.
pub(super) fn generate(acc: &mut Acc, doc: &Value) -> bool {
    acc.set_model(doc, "modelVersion");
    if let Some(usage) = doc.get("usageMetadata") {
        let prompt = count(usage.get("promptTokenCount"));
        let tool_prompt = count(usage.get("toolUsePromptTokenCount")).unwrap_or(0);
        if let Some(prompt) = prompt {
            acc.input = Some(prompt.saturating_add(tool_prompt));
        }
        let candidates = count(usage.get("candidatesTokenCount"));
        let thoughts = count(usage.get("thoughtsTokenCount"));
        if candidates.is_some() || thoughts.is_some() {
            acc.output = Some(
                candidates
                    .unwrap_or(0)
                    .saturating_add(thoughts.unwrap_or(0)),
            );
            acc.reasoning = thoughts.or(acc.reasoning);
        } else if prompt.is_some() && acc.output.is_none() {
            // An embedding, or a stream chunk before any output was counted.
            acc.output = Some(0);
        }
        acc.cached = count(usage.get("cachedContentTokenCount")).or(acc.cached);
    }
    let mut content = false;
    let candidates = doc.get("candidates").and_then(Value::as_array);
    for candidate in candidates.into_iter().flatten() {
        if let Some(reason) = str_at(candidate, "finishReason") {
            acc.stop_reason = Some(reason.to_owned());
        }
        let parts = candidate
            .pointer("/content/parts")
            .and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            content |= non_empty_str(part.get("text"));
            if let Some(call) = part.get("functionCall") {
                content = true;
                acc.push_tool(str_at(call, "id"), str_at(call, "name"));
            }
        }
    }
    content
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::model::Body;
    use crate::model::{TokenUsage, ToolCall};
    use crate::usage::tests::{exchange, json_body, sse_body, summary};

    #[expect(
        clippy::needless_pass_by_value,
        reason = "a test builder called with temporaries"
    )]
    fn chunk(text: &str, finish: bool, usage: serde_json::Value) -> serde_json::Value {
        let mut candidate =
            json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if finish {
            candidate["finishReason"] = json!("STOP");
        }
        json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "abc"})
    }

    #[test]
    fn generate_content_body_with_thoughts_and_cache() {
        let body = json!({
            "candidates": [{"content": {"parts": [{"text": "Paris."}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1_200, "candidatesTokenCount": 3, "totalTokenCount": 1_253,
                "cachedContentTokenCount": 1_000, "thoughtsTokenCount": 50,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1_200}]},
            "modelVersion": "gemini-2.5-pro", "responseId": "x"
        });
        let ex = exchange(
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            json!({"contents": []}),
            json_body(body),
            900.0,
            1_000.0,
        );
        let s = summary(&ex);
        assert_eq!(s.model.as_deref(), Some("gemini-2.5-pro"));
        assert_eq!(
            s.usage,
            Some(TokenUsage {
                input_tokens: 1_200,
                output_tokens: 53,
                cached_input_tokens: 1_000,
                cache_write_tokens: 0,
                reasoning_tokens: 50
            })
        );
        assert_eq!(s.stop_reason.as_deref(), Some("STOP"));
    }

    #[test]
    fn stream_over_sse_takes_the_last_usage() {
        let partial = json!({"promptTokenCount": 8, "totalTokenCount": 8});
        let full =
            json!({"promptTokenCount": 8, "candidatesTokenCount": 12, "totalTokenCount": 20});
        let events = vec![
            (
                400.0,
                None,
                chunk("Fake gemini answer ", false, partial.clone()).to_string(),
            ),
            (
                420.0,
                None,
                chunk("nonce-1 to: ", false, partial).to_string(),
            ),
            (440.0, None, chunk("hello", true, full).to_string()),
        ];
        let ex = exchange(
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            json!({}),
            sse_body(&events),
            400.0,
            440.0,
        );
        let s = summary(&ex);
        assert!(s.streamed);
        assert_eq!(s.ttft_ms, Some(400.0));
        assert_eq!(
            s.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((8, 12))
        );
        assert_eq!(s.stop_reason.as_deref(), Some("STOP"));
        assert_eq!(s.tokens_per_second, Some(300.0));
    }

    #[test]
    fn stream_as_json_array_with_function_call() {
        let call = json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_time", "args": {"tz": "UTC"}}}], "role": "model"},
            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 5, "totalTokenCount": 35}, "modelVersion": "gemini-2.0-flash"});
        let body = json!([
            chunk(
                "",
                false,
                json!({"promptTokenCount": 30, "totalTokenCount": 30})
            ),
            call
        ]);
        let mut ex = exchange(
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            json!({}),
            json_body(body),
            250.0,
            300.0,
        );
        ex.streamed = true;
        let s = summary(&ex);
        assert!(s.streamed);
        assert_eq!(
            s.ttft_ms,
            Some(250.0),
            "an array has no per-chunk times: time to first byte"
        );
        assert_eq!(
            s.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((30, 5))
        );
        assert_eq!(
            s.tool_calls,
            [ToolCall {
                id: None,
                name: "get_time".into()
            }]
        );
        assert_eq!(s.model.as_deref(), Some("gemini-2.0-flash"));
    }

    #[test]
    fn embed_content_has_no_output_or_ttft() {
        let body = json!({"embedding": {"values": [0.1, 0.2]}, "usageMetadata": {"promptTokenCount": 6, "totalTokenCount": 6}});
        let ex = exchange(
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-embedding-001:embedContent",
            json!({}),
            json_body(body),
            30.0,
            31.0,
        );
        let s = summary(&ex);
        assert_eq!(
            s.usage,
            Some(TokenUsage {
                input_tokens: 6,
                ..TokenUsage::default()
            })
        );
        assert_eq!(s.ttft_ms, None);
        assert_eq!(
            s.model.as_deref(),
            Some("gemini-embedding-001"),
            "from the path"
        );
        // Without usageMetadata (the public API omits it) there is no usage.
        let ex = exchange(
            "generativelanguage.googleapis.com",
            "/v1beta/models/text-embedding-004:embedContent",
            json!({}),
            json_body(json!({"embedding": {"values": [0.1]}})),
            30.0,
            31.0,
        );
        assert_eq!(summary(&ex).usage, None);
    }

    #[test]
    fn error_bodies_have_no_usage() {
        let mut ex = exchange(
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            json!({}),
            json_body(
                json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}),
            ),
            10.0,
            11.0,
        );
        ex.response.status = 429;
        let s = summary(&ex);
        assert_eq!(
            (s.usage, s.ttft_ms, s.tokens_per_second),
            (None, None, None)
        );
        ex.response.body = Body::default();
        assert_eq!(summary(&ex).usage, None);
    }
}
