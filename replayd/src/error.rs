//! Every way a request can fail, classified by whose fault it is, and the one place that
//! turns a failure into the HTTP response the app gets. Classes:
//!
//! - downstream: the app sent something replay cannot use (a body too large, a body that
//!   broke off): 400 or 413, and the connection is closed. Counted, but not a failed run.
//! - miss: no recording matches (under `--on-miss fail`): **404**, so SDKs do not retry it
//!   (they retry 408, 409, 429 and 5xx) and a CI job fails at once. The message says no
//!   recording matches, names the closest recorded exchange file, and lists the field diff.
//! - snapshot: the matching recording cannot be sent (a hand edit broke a header): 500.
//! - forward: under `--on-miss passthrough|record`, the real host could not be reached or
//!   broke off: **502**.
//! - budget: under `--budget`, the live spend is used up: **402** (not retried by SDKs),
//!   typed as the providers type an exhausted quota.
//! - internal: replayd itself failed: 500.
//!
//! As in pingora, downstream is the app and upstream the real provider. The
//! `x-llmsim-error` header names the class; a downstream error is sent as `upstream`, the
//! value replayd has always documented (docs/replay.md).
//!
//! Bodies are shaped like the provider's own errors, so SDKs surface the message:
//! `OpenAI` (and every generic host) `{"error":{"message","type","param","code"}}`,
//! Anthropic `{"type":"error","error":{"type","message"}}`, Gemini
//! `{"error":{"code","message","status"}}`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};
use llmsim_snapshot::provider::{ApiFamily, Endpoint, Provider};
use serde_json::{Value, json};

use crate::body::ReplayBody;
use llmsim_snapshot::error_chain;

use crate::engine::Miss;
use crate::response::PrepareError;
use crate::upstream::{BudgetExhausted, ForwardError};

/// Whose fault a failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The app's (downstream's) request.
    Downstream,
    /// No recording matches.
    Miss,
    /// The real host, forwarding a miss.
    Forward,
    /// The `--budget` for forwarding is used up.
    Budget,
    /// The snapshot.
    Snapshot,
    /// replayd.
    Internal,
}

/// The app sent something replay cannot use.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    /// The request body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Reading the request body failed (the client broke off or sent bad chunking).
    #[error("cannot read the request body")]
    BodyRead {
        /// The transport's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why a request got no recorded answer.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The app sent something replay cannot use.
    #[error(transparent)]
    Downstream(#[from] DownstreamError),
    /// No recording matches.
    #[error("{}", .0.reason())]
    NoRecording(Box<Miss>),
    /// The matching recording cannot be sent.
    #[error("the recording {} cannot be sent", file.display())]
    Snapshot {
        /// The exchange file.
        file: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Arc<PrepareError>,
    },
    /// Forwarding the miss to the real host failed.
    #[error("forwarding {request} to the real host failed")]
    Forward {
        /// `METHOD host/path`.
        request: String,
        /// Why.
        #[source]
        source: ForwardError,
    },
    /// The miss was not forwarded: the budget is used up.
    #[error(transparent)]
    Budget(#[from] BudgetExhausted),
    /// Building the response, or the timer that paces its events, failed.
    #[error("cannot build the response")]
    Internal {
        /// What `http` or the kernel reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ServeError {
    /// Whose fault it is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Downstream(_) => ErrorClass::Downstream,
            Self::NoRecording(_) => ErrorClass::Miss,
            Self::Forward { .. } => ErrorClass::Forward,
            Self::Budget(_) => ErrorClass::Budget,
            Self::Snapshot { .. } => ErrorClass::Snapshot,
            Self::Internal { .. } => ErrorClass::Internal,
        }
    }

    /// The status the app gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Downstream(DownstreamError::BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Downstream(DownstreamError::BodyRead { .. }) => StatusCode::BAD_REQUEST,
            Self::NoRecording(_) => StatusCode::NOT_FOUND,
            Self::Forward { .. } => StatusCode::BAD_GATEWAY,
            Self::Budget(_) => StatusCode::PAYMENT_REQUIRED,
            Self::Snapshot { .. } | Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message the app reads: what happened, and for a miss the closest recording and
    /// the differing fields, one per line.
    pub fn message(&self) -> String {
        let mut text = format!("llmsim replayd: {}", error_chain(self));
        if let Self::NoRecording(miss) = self {
            text = format!("llmsim replayd: {} for {}", miss.reason(), miss.request);
            match &miss.closest {
                Some(closest) => {
                    let _ = write!(
                        text,
                        ". Closest recorded exchange: {}",
                        closest.file.display()
                    );
                    if closest.diffs.is_empty() {
                        text.push_str(" (same request)");
                    } else {
                        text.push_str("; it differs in:");
                        for diff in &closest.diffs {
                            let _ = write!(text, "\n  {diff}");
                        }
                    }
                }
                None => text.push_str(". The snapshot has no recordings."),
            }
        }
        text
    }
}

/// The wire format of the error body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    /// `OpenAI` and OpenAI-compatible hosts.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Gemini.
    Gemini,
}

impl ErrorShape {
    /// The shape the app expects from `provider`; for a generic host, from the endpoint.
    pub fn of(provider: Provider, endpoint: Endpoint) -> Self {
        match ApiFamily::of(provider, endpoint) {
            ApiFamily::OpenAi => Self::OpenAi,
            ApiFamily::Anthropic => Self::Anthropic,
            ApiFamily::Gemini => Self::Gemini,
        }
    }
}

/// The one place a failure becomes a response: status by class, provider-shaped JSON
/// body, `Connection: close` after a downstream error.
pub fn error_response(error: &ServeError, shape: ErrorShape) -> Response<ReplayBody> {
    let status = error.status();
    let message = error.message();
    let body = error_body(shape, status, &message, error);
    let mut response = Response::new(ReplayBody::full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-llmsim-error",
        HeaderValue::from_static(class_name(error.class())),
    );
    if error.class() == ErrorClass::Downstream {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn class_name(class: ErrorClass) -> &'static str {
    match class {
        // The value docs/replay.md documents for this class.
        ErrorClass::Downstream => "upstream",
        ErrorClass::Miss => "miss",
        ErrorClass::Forward => "forward",
        ErrorClass::Budget => "budget",
        ErrorClass::Snapshot => "snapshot",
        ErrorClass::Internal => "internal",
    }
}

fn error_body(shape: ErrorShape, status: StatusCode, message: &str, error: &ServeError) -> Value {
    match shape {
        ErrorShape::OpenAi => {
            let (kind, code) = match error {
                ServeError::Downstream(_) => ("invalid_request_error", "llmsim_bad_request"),
                ServeError::NoRecording(_) => ("invalid_request_error", "llmsim_no_recording"),
                ServeError::Forward { .. } => ("server_error", "llmsim_forward_failed"),
                ServeError::Budget(_) => ("insufficient_quota", "llmsim_budget_exhausted"),
                ServeError::Snapshot { .. } => ("server_error", "llmsim_snapshot_error"),
                ServeError::Internal { .. } => ("server_error", "llmsim_internal_error"),
            };
            let param = match error {
                ServeError::NoRecording(miss) => miss
                    .closest
                    .as_ref()
                    .and_then(|c| c.diffs.first())
                    .map_or(Value::Null, |d| Value::String(d.pointer.clone())),
                _ => Value::Null,
            };
            json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
        }
        ErrorShape::Anthropic => {
            let kind = match status {
                StatusCode::NOT_FOUND => "not_found_error",
                StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
                StatusCode::BAD_REQUEST => "invalid_request_error",
                StatusCode::PAYMENT_REQUIRED => "billing_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        ErrorShape::Gemini => {
            let kind = match status {
                StatusCode::NOT_FOUND => "NOT_FOUND",
                StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "INVALID_ARGUMENT",
                StatusCode::PAYMENT_REQUIRED => "RESOURCE_EXHAUSTED",
                StatusCode::BAD_GATEWAY => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            json!({"error": {"code": status.as_u16(), "message": message, "status": kind}})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use llmsim_snapshot::signature::FieldDiff;

    use crate::engine::Closest;

    fn miss() -> ServeError {
        ServeError::NoRecording(Box::new(Miss {
            request: "POST api.openai.com/v1/chat/completions".into(),
            provider: Provider::OpenAi,
            endpoint: Endpoint::ChatCompletions,
            used_up: 0,
            closest: Some(Closest {
                file: "exchanges/000001-openai-post-v1-chat-completions.json".into(),
                diffs: vec![FieldDiff {
                    pointer: "/messages/0/content".into(),
                    recorded: Some(json!("France")),
                    requested: Some(json!("Italy")),
                }],
            }),
        }))
    }

    async fn json_of(response: Response<ReplayBody>) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn misses_are_404_in_each_provider_shape() {
        let error = miss();
        let response = error_response(&error, ErrorShape::OpenAi);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["x-llmsim-error"], "miss");
        let body = json_of(response).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("no recording matches"), "{message}");
        assert!(
            message.contains("000001-openai-post-v1-chat-completions.json"),
            "{message}"
        );
        assert!(
            message.contains(r#"/messages/0/content: recorded "France", requested "Italy""#),
            "{message}"
        );
        assert_eq!(body["error"]["code"], "llmsim_no_recording");
        assert_eq!(body["error"]["param"], "/messages/0/content");

        let body = json_of(error_response(&error, ErrorShape::Anthropic)).await;
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "not_found_error");
        assert_eq!(body["error"]["message"].as_str(), Some(message));

        let body = json_of(error_response(&error, ErrorShape::Gemini)).await;
        assert_eq!(body["error"]["code"], 404);
        assert_eq!(body["error"]["status"], "NOT_FOUND");
    }

    #[test]
    fn classes_map_to_statuses() {
        let too_large = ServeError::from(DownstreamError::BodyTooLarge { limit: 10 });
        assert_eq!(too_large.class(), ErrorClass::Downstream);
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let response = error_response(&too_large, ErrorShape::OpenAi);
        assert_eq!(response.headers()["connection"], "close");
        assert_eq!(response.headers()["x-llmsim-error"], "upstream");
        let snapshot = ServeError::Snapshot {
            file: "exchanges/x.json".into(),
            source: Arc::new(PrepareError::Status { status: 42 }),
        };
        assert_eq!(snapshot.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            snapshot
                .message()
                .contains("exchanges/x.json cannot be sent: recorded status 42")
        );
        assert_eq!(miss().class(), ErrorClass::Miss);
    }

    #[tokio::test]
    async fn forward_failures_and_budget_refusals_are_provider_shaped() {
        let forward = ServeError::Forward {
            request: "POST api.openai.com/v1/chat/completions".into(),
            source: ForwardError::NoHost,
        };
        let response = error_response(&forward, ErrorShape::OpenAi);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()["x-llmsim-error"], "forward");
        let body = json_of(response).await;
        assert_eq!(body["error"]["code"], "llmsim_forward_failed");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("names no host"), "{message}");

        let budget = ServeError::from(BudgetExhausted {
            budget_usd: 0.5,
            spent_usd: 0.5,
        });
        let response = error_response(&budget, ErrorShape::Anthropic);
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let body = json_of(response).await;
        assert_eq!(body["error"]["type"], "billing_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("budget of $0.5000 is exhausted"),
            "{message}"
        );
        let body = json_of(error_response(&budget, ErrorShape::Gemini)).await;
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn shapes_follow_provider_then_endpoint() {
        assert_eq!(
            ErrorShape::of(Provider::Anthropic, Endpoint::Other),
            ErrorShape::Anthropic
        );
        assert_eq!(
            ErrorShape::of(Provider::Generic, Endpoint::Messages),
            ErrorShape::Anthropic
        );
        assert_eq!(
            ErrorShape::of(Provider::Generic, Endpoint::GenerateContent),
            ErrorShape::Gemini
        );
        assert_eq!(
            ErrorShape::of(Provider::Xai, Endpoint::Messages),
            ErrorShape::OpenAi
        );
    }
}
