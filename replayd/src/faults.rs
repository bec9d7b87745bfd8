//! Fault injection for load tests: the rules of `llmsim.toml`'s `[faults]` and of
//! `--fault`, which requests they apply to (provider, endpoint path, model), and whether
//! each fires. A rule fires for every Nth request it applies to (`every`) or for a
//! fraction of them (`rate`), drawn from a hash of the seed, the rule's position and the
//! request's index among the requests that reached the rule (it applies to them and no
//! earlier rule fired for them): the same seed and the same
//! request sequence give the same faults, in any run. Requests that arrive concurrently
//! take their indexes in the order replayd reads them, so only that order can vary.
//!
//! A fault is decided before the recording is looked up. The ones answered instead of
//! the recording (an error status, a closed connection) leave the recording unserved, so
//! the app's retry gets it; the others ([`StreamFault`]) change how the recording goes out.
//! What an error status looks like is the provider's ([`ApiFamily`]); this module adds the
//! status, the rate-limit headers and the `x-llmsim-fault` header naming the fault.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use llmsim_snapshot::config::{FaultKind, FaultRule};
use llmsim_snapshot::provider::{ApiFamily, Endpoint, LimitState, Provider};

use crate::body::ReplayBody;

/// How an injected fault ends a connection, as the service's error.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// A `reset` fault: the connection is closed before any response.
    #[error("connection closed before the response by an injected reset fault")]
    Reset,
}

/// What a request is, as the fault rules, rate limits and metrics see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// The provider asked.
    pub provider: Provider,
    /// The API call.
    pub endpoint: Endpoint,
    /// The path, query string left out.
    pub path: String,
    /// The model asked for, when the request names one.
    pub model: Option<String>,
}

impl RequestFacts {
    /// The provider's error family.
    pub fn family(&self) -> ApiFamily {
        ApiFamily::of(self.provider, self.endpoint)
    }
}

/// A fault that changes how the recording goes out rather than replacing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFault {
    /// The response head, then nothing.
    Stall,
    /// The connection cut after this many events.
    Cut {
        /// Events sent first.
        after_events: usize,
    },
    /// An in-stream error event after this many events, then the end of the stream.
    Error {
        /// Events sent first.
        after_events: usize,
    },
    /// Everything this much later.
    SlowFirstToken(Duration),
}

/// What a fired rule does to the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// An error status instead of the recording.
    Status {
        /// The fault, for its status and counting.
        kind: FaultKind,
        /// `retry-after` for a 429 when the recording has none.
        retry_after: Duration,
    },
    /// The connection closed before any response.
    Reset,
    /// The recording, sent differently.
    Stream(StreamFault),
}

impl StreamFault {
    /// The fault's kind, for counting.
    pub fn kind(self) -> FaultKind {
        match self {
            Self::Stall => FaultKind::Stall,
            Self::Cut { .. } => FaultKind::Cut,
            Self::Error { .. } => FaultKind::StreamError,
            Self::SlowFirstToken(_) => FaultKind::SlowFirstToken,
        }
    }
}

impl Injected {
    /// The fault's kind, for counting.
    pub fn kind(self) -> FaultKind {
        match self {
            Self::Status { kind, .. } => kind,
            Self::Reset => FaultKind::Reset,
            Self::Stream(fault) => fault.kind(),
        }
    }
}

/// The run's fault rules, each with its count of the requests it applied to.
#[derive(Debug, Default)]
pub struct Faults {
    seed: u64,
    rules: Vec<(FaultRule, AtomicU64)>,
}

/// `retry-after` of an injected 429 when the rule and the recording give none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Faults {
    /// The rules, tried in order, with `seed`.
    pub fn new(seed: u64, rules: impl IntoIterator<Item = FaultRule>) -> Self {
        Self {
            seed,
            rules: rules.into_iter().map(|r| (r, AtomicU64::new(0))).collect(),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The rules, in order.
    pub fn rules(&self) -> impl Iterator<Item = &FaultRule> {
        self.rules.iter().map(|(rule, _)| rule)
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule looks at the model, so the request body must be read for it.
    pub fn need_model(&self) -> bool {
        self.rules.iter().any(|(r, _)| r.model.is_some())
    }

    /// The fault for this request: the first rule that applies to it and fires.
    pub fn decide(&self, facts: &RequestFacts) -> Option<Injected> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, (rule, _))| applies(rule, facts))
            .find_map(|(position, (rule, seen))| {
                let n = seen.fetch_add(1, Ordering::Relaxed);
                fires(rule, self.seed, position as u64, n).then(|| injected(rule))
            })
    }
}

fn applies(rule: &FaultRule, facts: &RequestFacts) -> bool {
    rule.provider.is_none_or(|p| p == facts.provider)
        && rule
            .endpoint
            .as_deref()
            .is_none_or(|e| e.trim_end_matches('/') == facts.path.trim_end_matches('/'))
        && rule
            .model
            .as_deref()
            .is_none_or(|m| facts.model.as_deref() == Some(m))
}

fn fires(rule: &FaultRule, seed: u64, position: u64, n: u64) -> bool {
    match (rule.every, rule.rate) {
        (Some(every), _) => (n + 1).is_multiple_of(every.max(1)),
        (None, Some(rate)) => unit(mix(&[seed, position, n])) < rate,
        (None, None) => false,
    }
}

fn injected(rule: &FaultRule) -> Injected {
    let delay = rule.delay_ms.map(Duration::from_millis);
    match rule.kind {
        FaultKind::Reset => Injected::Reset,
        FaultKind::Stall => Injected::Stream(StreamFault::Stall),
        FaultKind::Cut => Injected::Stream(StreamFault::Cut {
            after_events: rule.after_events,
        }),
        FaultKind::StreamError => Injected::Stream(StreamFault::Error {
            after_events: rule.after_events,
        }),
        FaultKind::SlowFirstToken => Injected::Stream(StreamFault::SlowFirstToken(
            delay.unwrap_or(DEFAULT_RETRY_AFTER),
        )),
        kind @ (FaultKind::RateLimited
        | FaultKind::InternalError
        | FaultKind::BadGateway
        | FaultKind::Unavailable
        | FaultKind::Overloaded) => Injected::Status {
            kind,
            retry_after: delay.unwrap_or(DEFAULT_RETRY_AFTER),
        },
    }
}

/// `SplitMix64`'s finaliser over `words`: a well-mixed 64-bit hash, the same on every
/// machine, for seeded decisions.
pub fn mix(words: &[u64]) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for word in words {
        state = state
            .wrapping_add(*word)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}

/// A hash as a number in [0, 1).
pub fn unit(hash: u64) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "53 bits are exactly representable"
    )]
    let fraction = (hash >> 11) as f64 / (1u64 << 53) as f64;
    fraction
}

/// The answer to a request refused with an error status: an injected fault or a
/// simulated rate limit. A 429 carries the limits (`limits`, else the recorded rate-limit
/// headers with nothing remaining) and `retry-after`.
pub fn status_response(
    facts: &RequestFacts,
    status: u16,
    limits: &[LimitState],
    recorded: &[(HeaderName, HeaderValue)],
    retry_after: Duration,
    marker: &'static str,
) -> Response<ReplayBody> {
    let family = facts.family();
    let limit = limits.first().map(|l| l.kind);
    let message = family.error_message(status, limit);
    let body = family.error_body(status, limit, &message).to_string();
    let mut response = Response::new(ReplayBody::full(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-llmsim-fault", HeaderValue::from_static(marker));
    if status != 429 {
        return response;
    }
    let generated = family.limit_headers(
        limits,
        retry_after.as_secs_f64(),
        time::OffsetDateTime::now_utc(),
    );
    let mut retry_after_recorded = false;
    if limits.is_empty() {
        for (name, value) in recorded {
            let value = if name.as_str().contains("remaining") {
                HeaderValue::from_static("0")
            } else {
                value.clone()
            };
            retry_after_recorded |= name == header::RETRY_AFTER;
            headers.append(name.clone(), value);
        }
    }
    // With no limits given, the generated headers are `retry-after` alone.
    for (name, value) in generated {
        if name == "retry-after" && retry_after_recorded {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

/// The recorded headers a 429 repeats: the rate-limit family's and `retry-after`.
pub fn is_rate_limit_header(name: &str) -> bool {
    name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
        || name == "retry-after"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(spec: &str) -> FaultRule {
        spec.parse().unwrap()
    }

    fn facts(model: &str) -> RequestFacts {
        RequestFacts {
            provider: Provider::OpenAi,
            endpoint: Endpoint::ChatCompletions,
            path: "/v1/chat/completions".into(),
            model: Some(model.into()),
        }
    }

    fn pattern(faults: &Faults, facts: &RequestFacts, n: usize) -> Vec<bool> {
        (0..n).map(|_| faults.decide(facts).is_some()).collect()
    }

    #[test]
    fn every_nth_and_seeded_rates_repeat_exactly() {
        let every = Faults::new(0, [rule("kind=503,every=3")]);
        assert_eq!(
            pattern(&every, &facts("m"), 7),
            [false, false, true, false, false, true, false]
        );
        let a = pattern(
            &Faults::new(9, [rule("kind=429,rate=0.3")]),
            &facts("m"),
            1000,
        );
        let b = pattern(
            &Faults::new(9, [rule("kind=429,rate=0.3")]),
            &facts("m"),
            1000,
        );
        assert_eq!(a, b, "the same seed gives the same faults");
        let c = pattern(
            &Faults::new(10, [rule("kind=429,rate=0.3")]),
            &facts("m"),
            1000,
        );
        assert_ne!(a, c, "another seed gives others");
        let fired = a.iter().filter(|f| **f).count();
        assert!((250..350).contains(&fired), "{fired} of 1000 at 30%");
    }

    #[test]
    fn rules_apply_by_provider_endpoint_and_model() {
        let faults = Faults::new(
            0,
            [
                rule("kind=cut,every=1,model=gpt-4o,after_events=2"),
                rule("kind=529,every=1,provider=anthropic"),
                rule("kind=reset,every=1,endpoint=/v1/embeddings"),
            ],
        );
        assert!(faults.need_model());
        assert_eq!(
            faults.decide(&facts("gpt-4o")),
            Some(Injected::Stream(StreamFault::Cut { after_events: 2 }))
        );
        assert_eq!(faults.decide(&facts("gpt-4o-mini")), None);
        let mut anthropic = facts("claude");
        anthropic.provider = Provider::Anthropic;
        assert_eq!(
            faults.decide(&anthropic).map(Injected::kind),
            Some(FaultKind::Overloaded)
        );
        let mut embeddings = facts("e");
        embeddings.path = "/v1/embeddings".into();
        assert_eq!(faults.decide(&embeddings), Some(Injected::Reset));
    }

    #[test]
    fn a_429_repeats_the_recorded_limits_with_nothing_remaining() {
        let recorded = [
            (
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderValue::from_static("5000"),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from_static("4999"),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset-requests"),
                HeaderValue::from_static("12ms"),
            ),
        ];
        let response = status_response(
            &facts("m"),
            429,
            &[],
            &recorded,
            Duration::from_secs(2),
            "429",
        );
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers["x-ratelimit-limit-requests"], "5000");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
        assert_eq!(headers["x-ratelimit-reset-requests"], "12ms");
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["x-llmsim-fault"], "429");
    }
}
