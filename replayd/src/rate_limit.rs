//! Rate-limit simulation (`--rate-limit`): per provider, requests and tokens per minute,
//! given on the command line or read from the recording's own `x-ratelimit-limit-*` /
//! `anthropic-ratelimit-*-limit` headers. Each limit is a bucket of its size refilled
//! continuously over a minute, as the providers describe theirs: a request takes one
//! from the requests bucket and is refused while it is empty or the tokens bucket is
//! used up; a served answer takes its recorded tokens (input and output) from the tokens
//! bucket. A refused request gets the provider's 429 with the limit, what remains, when
//! it resets, and `retry-after`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use llmsim_snapshot::provider::{LimitKind, LimitState, Provider, ProviderError};

/// Why a `--rate-limit` value is not one.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// Not `PROVIDER=recorded` or `PROVIDER=RPM[/TPM]`.
    #[error(
        "invalid rate limit {value:?}: expected PROVIDER=recorded or PROVIDER=RPM[/TPM] \
         (requests and tokens per minute, e.g. openai=60/40000)"
    )]
    Syntax {
        /// The value given.
        value: String,
    },
    /// The provider is not one llmsim knows.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// `recorded`, but the recording has no rate-limit headers for the provider.
    #[error(
        "--rate-limit {provider}=recorded: the recording has no rate-limit headers for {provider}"
    )]
    NotRecorded {
        /// The provider.
        provider: Provider,
    },
}

/// One `--rate-limit` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// The provider limited.
    pub provider: Provider,
    /// The limits, or `None` for the recorded ones.
    pub limits: Option<Limits>,
}

/// Requests and tokens per minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub requests: Option<u64>,
    /// Tokens per minute.
    pub tokens: Option<u64>,
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let syntax = || RateLimitError::Syntax {
            value: value.to_owned(),
        };
        let (provider, spec) = value.split_once('=').ok_or_else(syntax)?;
        let provider: Provider = provider.trim().parse()?;
        if spec.trim() == "recorded" {
            return Ok(Self {
                provider,
                limits: None,
            });
        }
        let (requests, tokens) = match spec.split_once('/') {
            Some((r, t)) => (r, Some(t)),
            None => (spec, None),
        };
        let number = |text: &str| text.trim().parse::<u64>().ok().filter(|n| *n > 0);
        let requests = number(requests).ok_or_else(syntax)?;
        let tokens = match tokens {
            Some(t) => Some(number(t).ok_or_else(syntax)?),
            None => None,
        };
        Ok(Self {
            provider,
            limits: Some(Limits {
                requests: Some(requests),
                tokens,
            }),
        })
    }
}

/// A request refused by a limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Limited {
    /// The provider's limits as the 429 reports them, the one exceeded first.
    pub states: Vec<LimitState>,
    /// How long until the request would pass.
    pub retry_after: Duration,
}

/// One limit's bucket.
#[derive(Debug)]
struct Bucket {
    kind: LimitKind,
    per_minute: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(kind: LimitKind, per_minute: u64, now: Instant) -> Self {
        #[expect(clippy::cast_precision_loss, reason = "limits are far below 2^52")]
        let per_minute = per_minute as f64;
        Self {
            kind,
            per_minute,
            level: per_minute,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_minute / 60.0).min(self.per_minute);
        self.at = now;
    }

    /// Seconds until the bucket holds `need`.
    fn wait_for(&self, need: f64) -> f64 {
        ((need - self.level) * 60.0 / self.per_minute).max(0.0)
    }

    fn state(&self) -> LimitState {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "levels lie between 0 and the limit"
        )]
        let (limit, remaining) = (self.per_minute as u64, self.level.max(0.0).floor() as u64);
        LimitState {
            kind: self.kind,
            limit,
            remaining,
            reset_secs: self.wait_for(self.per_minute),
        }
    }
}

/// The run's rate limits, per provider.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<Provider, Mutex<Vec<Bucket>>>,
}

impl RateLimiter {
    /// Limits for each provider given; `recorded` gives the limits the recording's headers
    /// state for a provider.
    pub fn new(
        limits: &[RateLimit],
        recorded: impl Fn(Provider) -> Option<Limits>,
    ) -> Result<Self, RateLimitError> {
        let now = Instant::now();
        let mut buckets = HashMap::new();
        for limit in limits {
            let given = match limit.limits {
                Some(given) => given,
                None => recorded(limit.provider)
                    .filter(|l| l.requests.is_some() || l.tokens.is_some())
                    .ok_or(RateLimitError::NotRecorded {
                        provider: limit.provider,
                    })?,
            };
            let mut list = Vec::new();
            if let Some(requests) = given.requests {
                list.push(Bucket::new(LimitKind::Requests, requests, now));
            }
            if let Some(tokens) = given.tokens {
                list.push(Bucket::new(LimitKind::Tokens, tokens, now));
            }
            buckets.insert(limit.provider, Mutex::new(list));
        }
        Ok(Self { buckets })
    }

    /// Whether no provider is limited.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes one request from `provider`'s limits, or says why it is refused.
    pub fn admit(&self, provider: Provider) -> Result<(), Limited> {
        let Some(buckets) = self.buckets.get(&provider) else {
            return Ok(());
        };
        let mut buckets = buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        for bucket in buckets.iter_mut() {
            bucket.refill(now);
        }
        let exceeded = buckets.iter().position(|b| match b.kind {
            LimitKind::Requests => b.level < 1.0,
            LimitKind::Tokens => b.level <= 0.0,
        });
        if let Some(first) = exceeded {
            let need = |b: &Bucket| match b.kind {
                LimitKind::Requests => 1.0,
                LimitKind::Tokens => f64::MIN_POSITIVE,
            };
            let wait = buckets[first].wait_for(need(&buckets[first]));
            let mut states: Vec<LimitState> = buckets.iter().map(Bucket::state).collect();
            states.swap(0, first);
            return Err(Limited {
                states,
                retry_after: Duration::from_secs_f64(wait.min(86_400.0)),
            });
        }
        for bucket in buckets.iter_mut() {
            if bucket.kind == LimitKind::Requests {
                bucket.level -= 1.0;
            }
        }
        Ok(())
    }

    /// Takes the tokens of a served answer from `provider`'s tokens limit.
    pub fn charge_tokens(&self, provider: Provider, tokens: u64) {
        let Some(buckets) = self.buckets.get(&provider) else {
            return;
        };
        let mut buckets = buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        for bucket in buckets.iter_mut() {
            if bucket.kind == LimitKind::Tokens {
                bucket.refill(now);
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "token counts are far below 2^52"
                )]
                let tokens = tokens as f64;
                bucket.level -= tokens;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(
            "openai=60/40000".parse::<RateLimit>().unwrap(),
            RateLimit {
                provider: Provider::OpenAi,
                limits: Some(Limits {
                    requests: Some(60),
                    tokens: Some(40000)
                })
            }
        );
        assert_eq!(
            "anthropic=recorded".parse::<RateLimit>().unwrap().limits,
            None
        );
        for bad in ["openai", "openai=0", "openai=x", "bard=5", "openai=5/"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_past_the_limit_get_refused_until_it_refills() {
        let limiter = RateLimiter::new(&["openai=3".parse().unwrap()], |_| None).unwrap();
        for _ in 0..3 {
            limiter.admit(Provider::OpenAi).unwrap();
        }
        let refused = limiter.admit(Provider::OpenAi).unwrap_err();
        assert_eq!(refused.states[0].kind, LimitKind::Requests);
        assert_eq!(
            (refused.states[0].limit, refused.states[0].remaining),
            (3, 0)
        );
        // One request per 20 s comes back.
        assert!(refused.retry_after > Duration::from_secs(19), "{refused:?}");
        assert!(limiter.admit(Provider::Anthropic).is_ok(), "not limited");
    }

    #[test]
    fn served_tokens_use_up_the_tokens_limit() {
        let limiter = RateLimiter::new(&["openai=100/50".parse().unwrap()], |_| None).unwrap();
        limiter.admit(Provider::OpenAi).unwrap();
        limiter.charge_tokens(Provider::OpenAi, 80);
        let refused = limiter.admit(Provider::OpenAi).unwrap_err();
        assert_eq!(refused.states[0].kind, LimitKind::Tokens);
        let recorded = RateLimiter::new(&["openai=recorded".parse().unwrap()], |_| {
            Some(Limits {
                requests: Some(5),
                tokens: None,
            })
        })
        .unwrap();
        assert!(!recorded.is_empty());
        assert!(matches!(
            RateLimiter::new(&["gemini=recorded".parse().unwrap()], |_| None),
            Err(RateLimitError::NotRecorded { .. })
        ));
    }
}
