//! Helpers shared by the format tests, and tests of the summary as a whole.

use serde_json::{Value, json};

use super::*;
use crate::model::{Body, Exchange, SseEvent};
use crate::provider::Provider;

/// A complete 200 exchange with `response` as its body.
#[expect(
    clippy::needless_pass_by_value,
    reason = "callers pass json! literals and bodies built in place"
)]
pub(crate) fn exchange(
    host: &str,
    path: &str,
    request: Value,
    response: Body,
    ttfb_ms: f64,
    duration_ms: f64,
) -> Exchange {
    let method = "POST";
    let endpoint = Endpoint::classify(method, path);
    let mut exchange = crate::fixtures::exchange(json!({
        "seq": 1,
        "provider": Provider::from_host(host),
        "host": host,
        "scheme": "https",
        "process": {"pid": 1, "comm": "python3", "exe": null},
        "started_at": "2026-07-01T09:00:00Z",
        "streamed": provider::is_streaming(endpoint, Some(&request)),
        "model": provider::model_of(endpoint, path, Some(&request)),
        "request": {
            "method": method,
            "path": path,
            "headers": [],
            "body": {"kind": "json", "json": request},
        },
        "response": {"status": 200, "headers": [], "body": response},
    }));
    // Set directly: JSON has no NaN or infinity, which some tests time with.
    exchange.ttfb_ms = ttfb_ms;
    exchange.duration_ms = duration_ms;
    exchange
}

pub(crate) fn json_body(json: Value) -> Body {
    Body::Json {
        content_encoding: None,
        style: crate::model::JsonStyle::default(),
        verbatim: None,
        offsets_ms: None,
        json,
    }
}

/// An SSE body of `(offset_ms, event name, data)`.
pub(crate) fn sse_body(events: &[(f64, Option<String>, String)]) -> Body {
    Body::Sse {
        content_encoding: None,
        crlf: false,
        events: events
            .iter()
            .map(|(offset_ms, event, data)| SseEvent {
                offset_ms: *offset_ms,
                event: event.clone(),
                data: data.clone(),
                id: None,
                retry: None,
                wire: None,
            })
            .collect(),
        unterminated: None,
    }
}

/// [`sse_body`], for streams whose events are named.
pub(crate) fn sse_named(events: &[(f64, Option<String>, String)]) -> Body {
    sse_body(events)
}

pub(crate) fn summary(exchange: &Exchange) -> ExchangeSummary {
    summarize(exchange).expect("a model call has a summary")
}

#[test]
fn non_model_calls_have_no_summary() {
    let mut ex = exchange(
        "api.openai.com",
        "/v1/models",
        json!({}),
        json_body(json!({"object": "list", "data": []})),
        1.0,
        2.0,
    );
    ex.request.method = "GET".into();
    assert_eq!(summarize(&ex), None);
}

#[test]
fn odd_bodies_never_panic() {
    for body in [
        Body::default(),
        Body::Text {
            content_encoding: None,
            text: "upstream connect error".into(),
        },
        Body::Base64 {
            content_encoding: None,
            base64: vec![0xff, 0],
        },
        json_body(json!(null)),
        json_body(json!([1, "x", null])),
        json_body(
            json!({"usage": {"prompt_tokens": -3, "completion_tokens": 1.0e300}, "choices": "x"}),
        ),
        sse_body(&[
            (1.0, None, "{not json".into()),
            (2.0, None, "[DONE]".into()),
        ]),
    ] {
        for path in [
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/embeddings",
            "/v1/messages",
            "/v1beta/models/m:generateContent",
        ] {
            let ex = exchange(
                "api.openai.com",
                path,
                json!({}),
                body.clone(),
                f64::NAN,
                f64::INFINITY,
            );
            let s = summary(&ex);
            assert!(
                s.ttft_ms.is_none_or(f64::is_finite)
                    && s.tokens_per_second.is_none_or(f64::is_finite)
            );
        }
    }
}

#[test]
fn failed_calls_have_no_timing() {
    let mut ex = exchange(
        "api.openai.com",
        "/v1/chat/completions",
        json!({"model": "gpt-4o"}),
        json_body(json!({"error": {"message": "Rate limit", "type": "requests"}})),
        5.0,
        6.0,
    );
    ex.response.status = 429;
    let s = summary(&ex);
    assert_eq!(s.model.as_deref(), Some("gpt-4o"), "from the request");
    assert_eq!(
        (s.ttft_ms, s.tokens_per_second, s.usage),
        (None, None, None)
    );
}

#[test]
fn summary_of_prefers_the_stored_summary() {
    let mut ex = exchange(
        "api.openai.com",
        "/v1/embeddings",
        json!({}),
        json_body(json!({"object": "list", "usage": {"prompt_tokens": 3}})),
        1.0,
        2.0,
    );
    assert_eq!(
        summary_of(&ex)
            .and_then(|s| s.usage)
            .map(|u| u.input_tokens),
        Some(3)
    );
    let stored = ExchangeSummary {
        model: Some("hand-edited".into()),
        ..ExchangeSummary::default()
    };
    ex.summary = Some(stored.clone());
    assert_eq!(summary_of(&ex), Some(stored));
}

/// The documented example file carries the summary this module computes.
#[test]
fn the_documented_example_summary_is_what_summarize_says() {
    let doc = include_str!("../../../docs/snapshot-format.md");
    let (_, after) = doc
        .split_once("## A complete example")
        .expect("example heading");
    let (_, block) = after.split_once("```json\n").expect("example block");
    let (example, _) = block.split_once("```").expect("block end");
    let mut exchange: Exchange = serde_json::from_str(example).expect("the example parses");
    let stored = exchange.summary.take().expect("the example has a summary");
    assert_eq!(summarize(&exchange), Some(stored));
}
