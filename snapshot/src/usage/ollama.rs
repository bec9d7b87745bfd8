//! Ollama's native wire format: `/api/chat` and `/api/generate` answer one JSON
//! document, or stream NDJSON lines of the same shape, each with `"done": false` and
//! a piece of `message.content` (chat) or `response` (generate), the last with
//! `"done": true`, the `done_reason` and the counts: `prompt_eval_count` (input) and
//! `eval_count` (output).

use serde_json::Value;

use super::{Acc, count, non_empty_str, str_at};

/// One response document or stream line; `true` when it carried content.
pub(super) fn native(acc: &mut Acc, doc: &Value) -> bool {
    acc.set_model(doc, "model");
    if let Some(input) = count(doc.get("prompt_eval_count")) {
        acc.input = Some(input);
    }
    if let Some(output) = count(doc.get("eval_count")) {
        acc.output = Some(output);
    }
    if let Some(reason) = str_at(doc, "done_reason").filter(|r| !r.is_empty()) {
        acc.stop_reason = Some(reason.to_owned());
    }
    let message = doc.get("message");
    let mut content = non_empty_str(doc.get("response"))
        || ["content", "thinking"]
            .iter()
            .any(|k| non_empty_str(message.and_then(|m| m.get(*k))));
    if let Some(message) = message {
        content |= acc.push_message_tool_calls(message);
    }
    content
}

/// Whether `doc` looks like one of Ollama's native answers: a `done` flag beside
/// `model` and a `message` or `response`.
pub(super) fn is_native(doc: &Value) -> bool {
    doc.get("done").is_some_and(Value::is_boolean)
        && doc.get("model").is_some()
        && (doc.get("message").is_some() || doc.get("response").is_some())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::model::{Body, JsonStyle, NdjsonLine};
    use crate::provider::Endpoint;
    use crate::usage::tests::{exchange, json_body, summary};

    fn ndjson(lines: &[(f64, Value)]) -> Body {
        Body::Ndjson {
            content_encoding: None,
            lines: lines
                .iter()
                .map(|(offset_ms, json)| NdjsonLine {
                    offset_ms: *offset_ms,
                    json: json.clone(),
                })
                .collect(),
            style: JsonStyle {
                newline: true,
                ..JsonStyle::default()
            },
        }
    }

    #[test]
    fn a_streamed_chat_counts_from_its_last_line() {
        let body = ndjson(&[
            (
                30.0,
                json!({"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": false}),
            ),
            (
                40.0,
                json!({"model": "llama3.2", "message": {"role": "assistant", "content": "Hi"}, "done": false}),
            ),
            (
                55.0,
                json!({"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": true,
                       "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 7}),
            ),
        ]);
        let ex = exchange(
            "localhost",
            "/api/chat",
            json!({"model": "llama3.2", "messages": []}),
            body,
            30.0,
            55.0,
        );
        let s = summary(&ex);
        assert_eq!(s.endpoint, Endpoint::OllamaChat);
        assert_eq!(s.model.as_deref(), Some("llama3.2"));
        assert!(s.streamed, "Ollama streams unless told not to");
        let usage = s.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (26, 7));
        assert_eq!(s.ttft_ms, Some(40.0));
        assert_eq!(s.stop_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn a_whole_generate_answer_and_a_sniffed_one() {
        let answer = json!({"model": "qwen2.5:0.5b", "response": "4", "done": true,
                            "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 2});
        let ex = exchange(
            "127.0.0.1",
            "/api/generate",
            json!({"model": "qwen2.5:0.5b", "prompt": "2+2", "stream": false}),
            json_body(answer.clone()),
            10.0,
            20.0,
        );
        let s = summary(&ex);
        assert_eq!(s.endpoint, Endpoint::OllamaGenerate);
        assert!(!s.streamed);
        let usage = s.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (12, 2));
        // The same answer behind a proxy's own path is still recognised.
        let ex = exchange(
            "gateway",
            "/ollama/generate",
            json!({}),
            json_body(answer),
            10.0,
            20.0,
        );
        assert_eq!(summary(&ex).usage.unwrap().output_tokens, 2);
    }
}
