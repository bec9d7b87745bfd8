//! Usage extraction: what one exchange cost in tokens and how fast it was
//! answered, read from the response body in each provider's wire format
//! (plain JSON, SSE streams, Gemini's JSON-array streams and Ollama's NDJSON streams). The result, an
//! [`ExchangeSummary`] (part of the model, [`crate::model`]), is stored in the
//! exchange file so a reader sees the model, tokens, time to first token, stop
//! reason and tool calls without parsing the bodies. Extraction never fails:
//! what a body does not say is left empty.

mod anthropic;
mod gemini;
mod ollama;
mod openai;

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use crate::model::{Body, Exchange, ExchangeSummary, SseEvent, TokenUsage, ToolCall};
use crate::provider::{self, Endpoint};

/// The summary stored in `exchange`, or one computed from its bodies when
/// the file has none (recordings made before summaries were stored).
pub fn summary_of(exchange: &Exchange) -> Option<ExchangeSummary> {
    exchange.summary.clone().or_else(|| summarize(exchange))
}

/// Reads the summary of one exchange from its bodies. `None` when the
/// exchange is not a model call in any wire format this crate knows (a
/// `GET /v1/models`, an unknown API).
pub fn summarize(exchange: &Exchange) -> Option<ExchangeSummary> {
    let request = &exchange.request;
    let mut endpoint = Endpoint::classify(&request.method, &request.path);
    let docs = documents(&exchange.response.body);
    let format = if let Some(format) = Format::of(endpoint) {
        format
    } else {
        let format = Format::sniff(&docs)?;
        endpoint = format.endpoint();
        format
    };
    let mut acc = Acc::default();
    for (offset, doc) in &docs {
        let content = match format {
            Format::Chat => openai::chat(&mut acc, doc),
            Format::Responses => openai::responses(&mut acc, doc),
            Format::Embeddings => openai::embeddings(&mut acc, doc),
            Format::Messages => anthropic::messages(&mut acc, doc),
            Format::Gemini => gemini::generate(&mut acc, doc),
            Format::Ollama => ollama::native(&mut acc, doc),
        };
        if content && acc.first_content_ms.is_none() {
            acc.first_content_ms = *offset;
        }
    }
    let streamed = exchange.streamed || exchange.response.body.sse_events().is_some();
    let ok = (200..300).contains(&exchange.response.status);
    let usage = acc.usage();
    let ttft_ms = if ok && format != Format::Embeddings && endpoint != Endpoint::EmbedContent {
        acc.first_content_ms
            .or((exchange.ttfb_ms > 0.0).then_some(exchange.ttfb_ms))
            .filter(|ms| ms.is_finite())
    } else {
        None
    };
    let tokens_per_second = ok
        .then(|| tokens_per_second(usage.as_ref(), acc.first_content_ms, exchange.duration_ms))
        .flatten();
    let model = acc
        .model
        .take()
        .or_else(|| exchange.model.clone())
        .or_else(|| provider::model_of(endpoint, &request.path, request.body.json()));
    Some(ExchangeSummary {
        endpoint,
        model,
        streamed,
        usage,
        ttft_ms,
        tokens_per_second,
        stop_reason: acc.stop_reason,
        tool_calls: acc.tool_calls,
    })
}

/// Output tokens over generation time, rounded to 0.01: from the first
/// content to the end for a stream, the whole call otherwise.
fn tokens_per_second(
    usage: Option<&TokenUsage>,
    first_content_ms: Option<f64>,
    duration_ms: f64,
) -> Option<f64> {
    let output = usage?.output_tokens;
    if output == 0 || !duration_ms.is_finite() {
        return None;
    }
    let generation_ms = first_content_ms
        .map(|first| duration_ms - first)
        .filter(|ms| *ms >= 1.0)
        .unwrap_or(duration_ms);
    if generation_ms <= 0.0 {
        return None;
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "token counts are far below 2^52"
    )]
    let rate = output as f64 * 1000.0 / generation_ms;
    Some((rate * 100.0).round() / 100.0).filter(|r| r.is_finite())
}

/// The wire formats whose usage this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `OpenAI` chat completions and every compatible server.
    Chat,
    /// `OpenAI` Responses API.
    Responses,
    /// OpenAI-compatible embeddings.
    Embeddings,
    /// Anthropic Messages.
    Messages,
    /// Gemini `generateContent`, `streamGenerateContent` and `embedContent`.
    Gemini,
    /// Ollama's native `/api/chat` and `/api/generate`.
    Ollama,
}

impl Format {
    fn of(endpoint: Endpoint) -> Option<Self> {
        match endpoint {
            Endpoint::ChatCompletions => Some(Self::Chat),
            Endpoint::Responses => Some(Self::Responses),
            Endpoint::Embeddings => Some(Self::Embeddings),
            Endpoint::Messages => Some(Self::Messages),
            Endpoint::GenerateContent
            | Endpoint::StreamGenerateContent
            | Endpoint::EmbedContent => Some(Self::Gemini),
            Endpoint::OllamaChat | Endpoint::OllamaGenerate => Some(Self::Ollama),
            Endpoint::Other => None,
        }
    }

    fn endpoint(self) -> Endpoint {
        match self {
            Self::Chat => Endpoint::ChatCompletions,
            Self::Responses => Endpoint::Responses,
            Self::Embeddings => Endpoint::Embeddings,
            Self::Messages => Endpoint::Messages,
            Self::Gemini => Endpoint::GenerateContent,
            Self::Ollama => Endpoint::OllamaChat,
        }
    }

    /// Recognises a format from the response documents of a path no
    /// provider is known for (an OpenAI-compatible server on its own path).
    fn sniff(docs: &[(Option<f64>, Cow<'_, Value>)]) -> Option<Self> {
        docs.iter().find_map(|(_, doc)| {
            let object = doc.get("object").and_then(Value::as_str).unwrap_or("");
            let kind = doc.get("type").and_then(Value::as_str).unwrap_or("");
            if object.starts_with("chat.completion") {
                Some(Self::Chat)
            } else if object == "response" || kind.starts_with("response.") {
                Some(Self::Responses)
            } else if object == "list" && doc.get("usage").is_some() {
                Some(Self::Embeddings)
            } else if kind == "message" || kind == "message_start" {
                Some(Self::Messages)
            } else if doc.get("usageMetadata").is_some() || doc.get("candidates").is_some() {
                Some(Self::Gemini)
            } else if ollama::is_native(doc) {
                Some(Self::Ollama)
            } else {
                None
            }
        })
    }
}

/// The JSON documents a response body carries, each with its arrival offset
/// when the body was a stream: one for a JSON body, one per element of a
/// JSON array (Gemini's streaming without `alt=sse`), one per SSE event
/// whose data is JSON (`[DONE]` and other text skipped), one per NDJSON
/// line. A JSON body is
/// borrowed, not copied: replay summarises every recorded response at
/// start-up.
fn documents(body: &Body) -> Vec<(Option<f64>, Cow<'_, Value>)> {
    fn whole(value: Cow<'_, Value>) -> Vec<(Option<f64>, Cow<'_, Value>)> {
        match value {
            Cow::Borrowed(Value::Array(items)) => {
                items.iter().map(|v| (None, Cow::Borrowed(v))).collect()
            }
            Cow::Owned(Value::Array(items)) => {
                items.into_iter().map(|v| (None, Cow::Owned(v))).collect()
            }
            other => vec![(None, other)],
        }
    }
    match body {
        Body::Json { json, .. } => whole(Cow::Borrowed(json)),
        Body::Text { text, .. } => serde_json::from_str::<Value>(text)
            .map(|v| whole(Cow::Owned(v)))
            .unwrap_or_default(),
        Body::Sse { events, .. } => events.iter().filter_map(event_document).collect(),
        Body::Ndjson { lines, .. } => lines
            .iter()
            .map(|line| (Some(line.offset_ms), Cow::Borrowed(&line.json)))
            .collect(),
        Body::Empty { .. } | Body::Base64 { .. } | Body::Encoded { .. } => Vec::new(),
    }
}

fn event_document(event: &SseEvent) -> Option<(Option<f64>, Cow<'static, Value>)> {
    let data = event.data.trim();
    if !data.starts_with(['{', '[']) {
        return None;
    }
    let value = serde_json::from_str(data).ok()?;
    Some((Some(event.offset_ms), Cow::Owned(value)))
}

/// What the documents of one response said so far; later documents of a
/// stream overwrite earlier counts, since every format reports running totals.
#[derive(Debug, Default)]
struct Acc {
    model: Option<String>,
    /// Prompt tokens as the format counts them (see `input_excludes_cache`).
    input: Option<u64>,
    output: Option<u64>,
    cached: Option<u64>,
    cache_write: Option<u64>,
    reasoning: Option<u64>,
    /// Anthropic counts cache reads and writes apart from `input_tokens`.
    input_excludes_cache: bool,
    stop_reason: Option<String>,
    tool_calls: Vec<ToolCall>,
    /// Streamed tool calls by (choice, tool index), to their place in
    /// `tool_calls`.
    tool_slots: HashMap<(u64, u64), usize>,
    first_content_ms: Option<f64>,
}

impl Acc {
    fn usage(&self) -> Option<TokenUsage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        let cached = self.cached.unwrap_or(0);
        let cache_write = self.cache_write.unwrap_or(0);
        let mut input = self.input.unwrap_or(0);
        if self.input_excludes_cache {
            input = input.saturating_add(cached).saturating_add(cache_write);
        }
        Some(TokenUsage {
            input_tokens: input,
            output_tokens: self.output.unwrap_or(0),
            cached_input_tokens: cached,
            cache_write_tokens: cache_write,
            reasoning_tokens: self.reasoning.unwrap_or(0),
        })
    }

    fn set_model(&mut self, doc: &Value, key: &str) {
        if let Some(model) = str_at(doc, key).filter(|m| !m.is_empty()) {
            self.model = Some(model.to_owned());
        }
    }

    fn push_tool(&mut self, id: Option<&str>, name: Option<&str>) {
        self.tool_calls.push(ToolCall {
            id: id.map(str::to_owned),
            name: name.unwrap_or_default().to_owned(),
        });
    }

    /// The whole tool calls of an OpenAI-shaped `message` (`tool_calls[].id` and
    /// `.function.name`, the shape Ollama's native answers share); `true` when there were any.
    fn push_message_tool_calls(&mut self, message: &Value) -> bool {
        let calls = message.get("tool_calls").and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            self.push_tool(
                str_at(call, "id"),
                call.pointer("/function/name").and_then(Value::as_str),
            );
        }
        calls.is_some_and(|c| !c.is_empty())
    }
}

/// A token count: a non-negative integer (or a float some servers send).
fn count(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    value.as_u64().or_else(|| {
        let f = value.as_f64()?;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked finite and non-negative; saturates above u64::MAX"
        )]
        (f.is_finite() && f >= 0.0).then(|| f.round() as u64)
    })
}

fn str_at<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    doc.get(key)?.as_str()
}

fn non_empty_str(value: Option<&Value>) -> bool {
    value.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

#[cfg(test)]
pub(crate) mod tests;
