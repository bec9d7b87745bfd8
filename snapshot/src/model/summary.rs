//! The exchange summary as stored in the exchange file's `summary` field: the
//! model that answered, token counts, timing, stop reason and tool calls. This
//! module owns the stored form; [`crate::usage`] computes it from the bodies.

use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

use crate::provider::Endpoint;

/// What one exchange used and how it was answered, as stored in the
/// exchange file's `summary` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExchangeSummary {
    /// The API call, from the request's method and path.
    pub endpoint: Endpoint,
    /// The model that answered, as the response names it (`gpt-4o-2024-08-06`),
    /// else as the request named it.
    pub model: Option<String>,
    /// Whether the response arrived as a stream.
    pub streamed: bool,
    /// Token counts, when the response reported them.
    pub usage: Option<TokenUsage>,
    /// Milliseconds from request start to the first stream event that carried
    /// content (text, a tool call, reasoning); for an unstreamed answer, the
    /// time to the first response byte. `None` for failed calls and
    /// embeddings.
    pub ttft_ms: Option<f64>,
    /// Output tokens per second of generation: after the first token for a
    /// stream, over the whole call otherwise.
    pub tokens_per_second: Option<f64>,
    /// Why generation stopped, in the provider's words (`stop`, `end_turn`,
    /// `STOP`, `tool_calls`, `max_tokens`, `completed`).
    pub stop_reason: Option<String>,
    /// The tools the model called, in order.
    pub tool_calls: Vec<ToolCall>,
}

impl Default for ExchangeSummary {
    fn default() -> Self {
        Self {
            endpoint: Endpoint::Other,
            model: None,
            streamed: false,
            usage: None,
            ttft_ms: None,
            tokens_per_second: None,
            stop_reason: None,
            tool_calls: Vec::new(),
        }
    }
}

/// Token counts, normalised across providers: `input_tokens` counts every
/// prompt token, cached or not, and `output_tokens` every generated token,
/// reasoning included, so the subsets can be priced apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenUsage {
    /// All prompt tokens, including those read from or written to a cache.
    pub input_tokens: u64,
    /// All generated tokens, including reasoning.
    pub output_tokens: u64,
    /// Of the input, tokens read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Of the input, tokens written to the prompt cache (Anthropic's
    /// `cache_creation_input_tokens`), billed at a premium.
    pub cache_write_tokens: u64,
    /// Of the output, reasoning (thinking) tokens.
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// Input plus output tokens.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

impl AddAssign for TokenUsage {
    fn add_assign(&mut self, other: Self) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(other.cached_input_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
    }
}

/// One tool call the model made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolCall {
    /// The call's id (`call_…`, `toolu_…`), when the format has one.
    pub id: Option<String>,
    /// The tool's name.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn summary_serde_form_is_complete_and_lenient() {
        let s = ExchangeSummary {
            endpoint: Endpoint::Messages,
            model: Some("claude-sonnet-4-5".into()),
            streamed: true,
            usage: Some(TokenUsage {
                input_tokens: 10,
                output_tokens: 5,
                ..TokenUsage::default()
            }),
            ttft_ms: Some(598.25),
            tokens_per_second: Some(10.1),
            stop_reason: Some("end_turn".into()),
            tool_calls: vec![ToolCall {
                id: Some("toolu_1".into()),
                name: "f".into(),
            }],
        };
        let value = serde_json::to_value(&s).unwrap();
        assert_eq!(value["usage"]["cached_input_tokens"], 0);
        assert_eq!(value["endpoint"], "messages");
        assert_eq!(serde_json::from_value::<ExchangeSummary>(value).unwrap(), s);
        let sparse: ExchangeSummary = serde_json::from_value(json!({"model": "x"})).unwrap();
        assert_eq!(sparse.endpoint, Endpoint::Other);
    }
}
