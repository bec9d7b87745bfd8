//! Provider knowledge: which LLM API a host belongs to, which endpoint a
//! request calls, and where each wire format keeps the model name and the
//! streaming switch; and how each API family ([`ApiFamily`]) shapes its
//! errors, its in-stream error events and its rate-limit headers, for replay's
//! injected faults and simulated rate limits. Anything not recognised is
//! `Generic` / `Other`, never an error, so unknown OpenAI-compatible servers
//! still record and replay.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::authority::Authority;

/// An LLM API provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// api.openai.com
    OpenAi,
    /// api.anthropic.com
    Anthropic,
    /// generativelanguage.googleapis.com
    Gemini,
    /// api.x.ai
    Xai,
    /// openrouter.ai
    OpenRouter,
    /// Any other host (Azure `OpenAI`, Ollama, vLLM, LM Studio, ...).
    Generic,
}

/// The hosts whose provider is known, as replay's DNS answers them.
pub const KNOWN_HOSTS: [(&str, Provider); 5] = [
    ("api.openai.com", Provider::OpenAi),
    ("api.anthropic.com", Provider::Anthropic),
    ("generativelanguage.googleapis.com", Provider::Gemini),
    ("api.x.ai", Provider::Xai),
    ("openrouter.ai", Provider::OpenRouter),
];

/// A provider name that is not one of [`Provider`]'s.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The name matched no provider.
    #[error(
        "unknown provider {name:?} (expected openai, anthropic, gemini, xai, openrouter or generic)"
    )]
    Unknown {
        /// The name as given.
        name: String,
    },
}

impl Provider {
    /// Every provider, in declaration order.
    pub const ALL: [Self; 6] = [
        Self::OpenAi,
        Self::Anthropic,
        Self::Gemini,
        Self::Xai,
        Self::OpenRouter,
        Self::Generic,
    ];

    /// The provider serving `host` (a `Host` header or SNI value; any port,
    /// trailing dot and letter case are ignored).
    pub fn from_host(host: &str) -> Self {
        let host = host_name(host);
        KNOWN_HOSTS
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(host))
            .map_or(Self::Generic, |(_, provider)| *provider)
    }

    /// The lowercase name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Xai => "xai",
            Self::OpenRouter => "openrouter",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = ProviderError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| ProviderError::Unknown {
                name: name.to_owned(),
            })
    }
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address ([`Authority`]), without the
/// port and the trailing dot of a fully qualified name.
fn host_name(host: &str) -> &str {
    let name = Authority::parse(host).host;
    name.strip_suffix('.').unwrap_or(name)
}

/// The API call a request makes, from its method and path alone, so
/// OpenAI-compatible paths are recognised on any host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST …/chat/completions` (`OpenAI` and every compatible server,
    /// including `OpenRouter`'s `/api/v1/chat/completions`).
    ChatCompletions,
    /// `POST …/v1/responses` (`OpenAI` Responses API).
    Responses,
    /// `POST …/embeddings` (OpenAI-compatible embeddings).
    Embeddings,
    /// `POST …/v1/messages` (Anthropic Messages API).
    Messages,
    /// `POST …/models/{model}:generateContent` (Gemini).
    GenerateContent,
    /// `POST …/models/{model}:streamGenerateContent` (Gemini, streaming).
    StreamGenerateContent,
    /// `POST …/models/{model}:embedContent` (Gemini).
    EmbedContent,
    /// `POST /api/chat` (Ollama's native chat; streams NDJSON unless `"stream": false`).
    OllamaChat,
    /// `POST /api/generate` (Ollama's native completion; streams NDJSON unless
    /// `"stream": false`).
    OllamaGenerate,
    /// Anything else.
    Other,
}

impl Endpoint {
    /// Classifies a request; the query string is ignored.
    pub fn classify(method: &str, path: &str) -> Self {
        if !method.eq_ignore_ascii_case("POST") {
            return Self::Other;
        }
        let path = path_only(path);
        if let Some((_, call)) = gemini_call(path) {
            return match call {
                "generateContent" => Self::GenerateContent,
                "streamGenerateContent" => Self::StreamGenerateContent,
                "embedContent" => Self::EmbedContent,
                _ => Self::Other,
            };
        }
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Self::ChatCompletions
        } else if path.ends_with("/v1/responses") {
            Self::Responses
        } else if path.ends_with("/embeddings") {
            Self::Embeddings
        } else if path.ends_with("/v1/messages") {
            Self::Messages
        } else if path == "/api/chat" {
            Self::OllamaChat
        } else if path == "/api/generate" {
            Self::OllamaGenerate
        } else {
            Self::Other
        }
    }

    /// Whether this is one of Gemini's `models/{model}:{method}` calls.
    pub fn is_gemini(self) -> bool {
        matches!(
            self,
            Self::GenerateContent | Self::StreamGenerateContent | Self::EmbedContent
        )
    }
}

/// The model a request asks for: Gemini names it in the path, every other
/// format in the body's `model` field.
pub fn model_of(endpoint: Endpoint, path: &str, body: Option<&Value>) -> Option<String> {
    if endpoint.is_gemini() {
        return gemini_call(path_only(path)).map(|(model, _)| model.to_owned());
    }
    body?.get("model")?.as_str().map(str::to_owned)
}

/// Whether the request asks for a streamed response: Gemini by endpoint,
/// every other format by `"stream"` in the body, which defaults to `false`
/// except on Ollama's native endpoints, which stream unless told not to.
pub fn is_streaming(endpoint: Endpoint, body: Option<&Value>) -> bool {
    let stream = body.and_then(|b| b.get("stream")).and_then(Value::as_bool);
    match endpoint {
        Endpoint::StreamGenerateContent => true,
        Endpoint::GenerateContent | Endpoint::EmbedContent => false,
        Endpoint::OllamaChat | Endpoint::OllamaGenerate => stream.unwrap_or(true),
        _ => stream.unwrap_or(false),
    }
}

/// The wire family of an API's errors: `OpenAI`'s (and every OpenAI-compatible
/// host's), Anthropic's or Gemini's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiFamily {
    /// `{"error":{"message","type","param","code"}}`, `x-ratelimit-*` headers.
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`, `anthropic-ratelimit-*` headers.
    Anthropic,
    /// `{"error":{"code","message","status"}}`.
    Gemini,
}

/// Which limit a 429 is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl LimitKind {
    /// `requests` or `tokens`, as the providers' header names and `OpenAI`'s error
    /// `type` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }
}

/// One limit as a 429 reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitState {
    /// Which limit.
    pub kind: LimitKind,
    /// The limit per minute.
    pub limit: u64,
    /// What is left of it now.
    pub remaining: u64,
    /// Seconds until it is whole again.
    pub reset_secs: f64,
}

impl ApiFamily {
    /// The family the app expects from `provider`; for a generic host, from the
    /// endpoint it calls.
    pub fn of(provider: Provider, endpoint: Endpoint) -> Self {
        match provider {
            Provider::Anthropic => Self::Anthropic,
            Provider::Gemini => Self::Gemini,
            Provider::Generic if endpoint == Endpoint::Messages => Self::Anthropic,
            Provider::Generic if endpoint.is_gemini() => Self::Gemini,
            Provider::OpenAi | Provider::Xai | Provider::OpenRouter | Provider::Generic => {
                Self::OpenAi
            }
        }
    }

    /// The body of an error answered with `status`, as the provider words it; a 429
    /// names the limit that was hit.
    pub fn error_body(self, status: u16, limit: Option<LimitKind>, message: &str) -> Value {
        match self {
            Self::OpenAi => {
                let (kind, code) = match status {
                    429 => (
                        limit.unwrap_or(LimitKind::Requests).as_str(),
                        Value::from("rate_limit_exceeded"),
                    ),
                    _ => ("server_error", Value::Null),
                };
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
            Self::Anthropic => {
                let kind = match status {
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message}})
            }
            Self::Gemini => {
                let kind = match status {
                    429 => "RESOURCE_EXHAUSTED",
                    502..=504 | 529 => "UNAVAILABLE",
                    _ => "INTERNAL",
                };
                json!({"error": {"code": status, "message": message, "status": kind}})
            }
        }
    }

    /// The provider's own message for an error status.
    pub fn error_message(self, status: u16, limit: Option<LimitKind>) -> String {
        match (self, status) {
            (Self::Anthropic, 529) => "Overloaded".to_owned(),
            (Self::OpenAi, 429) => format!(
                "Rate limit reached for {} per minute. Please try again later.",
                limit.unwrap_or(LimitKind::Requests).as_str()
            ),
            (Self::Anthropic, 429) => format!(
                "This request would exceed the rate limit for your organization of {} \
                 per minute. Please try again later.",
                limit.unwrap_or(LimitKind::Requests).as_str()
            ),
            (Self::Gemini, 429) => "Resource has been exhausted (e.g. check quota).".to_owned(),
            (Self::OpenAi, _) => {
                "The server had an error while processing your request. Sorry about that!"
                    .to_owned()
            }
            (Self::Anthropic, _) => "Internal server error".to_owned(),
            (Self::Gemini, _) => "The service is currently unavailable.".to_owned(),
        }
    }

    /// An error event inside a server-sent-event stream, as the provider sends it:
    /// Anthropic's `event: error`, an `OpenAI` chunk holding `error`, a Gemini chunk
    /// holding `error`.
    pub fn stream_error_event(self) -> String {
        let data = match self {
            Self::Anthropic => {
                return format!(
                    "event: error\ndata: {}\n\n",
                    self.error_body(529, None, "Overloaded")
                );
            }
            Self::OpenAi | Self::Gemini => {
                self.error_body(500, None, &self.error_message(500, None))
            }
        };
        format!("data: {data}\n\n")
    }

    /// The header names carrying a limit, its remainder and its reset, in that order.
    pub fn limit_header_names(self, kind: LimitKind) -> Option<[String; 3]> {
        let kind = kind.as_str();
        match self {
            Self::OpenAi => Some([
                format!("x-ratelimit-limit-{kind}"),
                format!("x-ratelimit-remaining-{kind}"),
                format!("x-ratelimit-reset-{kind}"),
            ]),
            Self::Anthropic => Some([
                format!("anthropic-ratelimit-{kind}-limit"),
                format!("anthropic-ratelimit-{kind}-remaining"),
                format!("anthropic-ratelimit-{kind}-reset"),
            ]),
            Self::Gemini => None,
        }
    }

    /// The rate-limit headers of a 429: each limit with what is left and when it resets
    /// (`OpenAI`: a duration such as `1m2.5s`; Anthropic: an RFC 3339 instant after
    /// `now`), and `retry-after` in whole seconds, at least 1.
    pub fn limit_headers(
        self,
        limits: &[LimitState],
        retry_after_secs: f64,
        now: time::OffsetDateTime,
    ) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        for state in limits {
            let Some([limit, remaining, reset]) = self.limit_header_names(state.kind) else {
                continue;
            };
            let reset_value = match self {
                Self::Anthropic => {
                    let at = now + time::Duration::seconds_f64(state.reset_secs.max(0.0));
                    at.replace_nanosecond(0)
                        .unwrap_or(at)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                }
                Self::OpenAi | Self::Gemini => openai_duration(state.reset_secs),
            };
            headers.push((limit, state.limit.to_string()));
            headers.push((remaining, state.remaining.to_string()));
            headers.push((reset, reset_value));
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a retry delay of seconds, clamped to a day"
        )]
        let secs = retry_after_secs.ceil().clamp(1.0, 86_400.0) as u64;
        headers.push(("retry-after".to_owned(), secs.to_string()));
        headers
    }
}

/// A duration as `OpenAI`'s reset headers write it: `20ms`, `1.5s`, `6m0s`.
fn openai_duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).round());
    }
    let minutes = (secs / 60.0).floor();
    let rest = secs - minutes * 60.0;
    let rest = format!("{rest:.3}");
    let rest = rest.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0.0 {
        format!("{minutes}m{rest}s")
    } else {
        format!("{rest}s")
    }
}

fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// `…/models/{model}:{call}` as `(model, call)`.
fn gemini_call(path: &str) -> Option<(&str, &str)> {
    let (_, rest) = path.rsplit_once("/models/")?;
    let (model, call) = rest.split_once(':')?;
    (!model.is_empty() && !model.contains('/') && !call.contains('/')).then_some((model, call))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts_map_to_providers() {
        for (host, provider) in [
            ("api.openai.com", Provider::OpenAi),
            ("API.OpenAI.com:443", Provider::OpenAi),
            ("api.anthropic.com.", Provider::Anthropic),
            ("generativelanguage.googleapis.com", Provider::Gemini),
            ("api.x.ai", Provider::Xai),
            ("openrouter.ai:8443", Provider::OpenRouter),
            ("localhost:11434", Provider::Generic),
            ("[::1]:8080", Provider::Generic),
            ("::1", Provider::Generic),
            ("evil-api.openai.com", Provider::Generic),
            ("", Provider::Generic),
        ] {
            assert_eq!(Provider::from_host(host), provider, "{host}");
        }
        assert!(
            KNOWN_HOSTS
                .iter()
                .all(|(h, p)| Provider::from_host(h) == *p)
        );
    }

    #[test]
    fn names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), json!(p.as_str()));
        }
        assert!(
            matches!("bard".parse::<Provider>(), Err(ProviderError::Unknown { name }) if name == "bard")
        );
    }

    #[test]
    fn errors_and_limits_are_shaped_as_each_provider_sends_them() {
        let openai = ApiFamily::of(Provider::Generic, Endpoint::ChatCompletions);
        assert_eq!(openai, ApiFamily::OpenAi);
        assert_eq!(
            openai.error_body(429, Some(LimitKind::Tokens), "m"),
            json!({"error": {"message": "m", "type": "tokens", "param": null,
                             "code": "rate_limit_exceeded"}})
        );
        let anthropic = ApiFamily::of(Provider::Anthropic, Endpoint::Messages);
        assert_eq!(
            anthropic.error_body(529, None, &anthropic.error_message(529, None)),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        assert_eq!(
            anthropic.stream_error_event(),
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\
             \"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
        );
        let gemini = ApiFamily::of(Provider::Generic, Endpoint::StreamGenerateContent);
        assert_eq!(
            gemini.error_body(429, None, "m"),
            json!({"error": {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"}})
        );
        let now = time::macros::datetime!(2026-07-01 09:00:00 UTC);
        let state = |kind, reset_secs| LimitState {
            kind,
            limit: 60,
            remaining: 0,
            reset_secs,
        };
        assert_eq!(
            openai.limit_headers(
                &[
                    state(LimitKind::Requests, 0.25),
                    state(LimitKind::Tokens, 61.5)
                ],
                0.25,
                now
            ),
            [
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "250ms"),
                ("x-ratelimit-limit-tokens", "60"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "1m1.5s"),
                ("retry-after", "1"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(
            anthropic.limit_headers(&[state(LimitKind::Requests, 2.0)], 2.0, now),
            [
                ("anthropic-ratelimit-requests-limit", "60"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2026-07-01T09:00:02Z"),
                ("retry-after", "2"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn endpoints_are_classified() {
        for (method, path, endpoint) in [
            ("POST", "/v1/chat/completions", Endpoint::ChatCompletions),
            (
                "post",
                "/api/v1/chat/completions",
                Endpoint::ChatCompletions,
            ),
            (
                "POST",
                "/openai/deployments/gpt4/chat/completions?api-version=2024-10-21",
                Endpoint::ChatCompletions,
            ),
            ("POST", "/v1/responses", Endpoint::Responses),
            ("GET", "/v1/responses/resp_123", Endpoint::Other),
            ("POST", "/v1/embeddings", Endpoint::Embeddings),
            ("POST", "/v1/messages", Endpoint::Messages),
            ("POST", "/v1/threads/t1/messages", Endpoint::Other),
            (
                "POST",
                "/v1beta/models/gemini-2.0-flash:generateContent",
                Endpoint::GenerateContent,
            ),
            (
                "POST",
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=x",
                Endpoint::StreamGenerateContent,
            ),
            (
                "POST",
                "/v1beta/models/text-embedding-004:embedContent",
                Endpoint::EmbedContent,
            ),
            (
                "POST",
                "/v1beta/models/gemini-2.0-flash:countTokens",
                Endpoint::Other,
            ),
            ("GET", "/v1/chat/completions", Endpoint::Other),
            ("GET", "/v1/models", Endpoint::Other),
            ("POST", "", Endpoint::Other),
            ("POST", "/api/chat", Endpoint::OllamaChat),
            ("POST", "/api/generate", Endpoint::OllamaGenerate),
            ("GET", "/api/chat", Endpoint::Other),
            ("POST", "/api/tags", Endpoint::Other),
        ] {
            assert_eq!(
                Endpoint::classify(method, path),
                endpoint,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn model_comes_from_body_or_gemini_path() {
        let body = json!({"model": "gpt-4o-mini", "stream": true});
        assert_eq!(
            model_of(
                Endpoint::ChatCompletions,
                "/v1/chat/completions",
                Some(&body)
            )
            .as_deref(),
            Some("gpt-4o-mini")
        );
        let path = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse";
        let endpoint = Endpoint::classify("POST", path);
        assert_eq!(
            model_of(endpoint, path, None).as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(
            model_of(
                Endpoint::Messages,
                "/v1/messages",
                Some(&json!({"model": 3}))
            ),
            None
        );
        assert_eq!(model_of(Endpoint::Other, "/", None), None);
    }

    #[test]
    fn streaming_is_detected() {
        let on = json!({"stream": true});
        let off = json!({"stream": false});
        assert!(is_streaming(Endpoint::ChatCompletions, Some(&on)));
        assert!(!is_streaming(Endpoint::ChatCompletions, Some(&off)));
        assert!(!is_streaming(Endpoint::Messages, None));
        assert!(!is_streaming(Endpoint::Messages, Some(&json!("stream"))));
        assert!(is_streaming(Endpoint::StreamGenerateContent, None));
        assert!(!is_streaming(Endpoint::GenerateContent, Some(&on)));
        assert!(is_streaming(Endpoint::OllamaChat, None));
        assert!(is_streaming(Endpoint::OllamaGenerate, Some(&json!({}))));
        assert!(!is_streaming(Endpoint::OllamaChat, Some(&off)));
    }
}
