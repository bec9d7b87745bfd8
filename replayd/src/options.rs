//! Replay behaviour as typed values: how streamed answers are paced ([`Pace`]), what a
//! request with no recording gets ([`OnMiss`]), the [`ReplayOptions`] that bundle them
//! with the repeat policy and host matching, and the load-test settings ([`LoadOptions`]):
//! injected faults, simulated rate limits and the seed. The binary fills them from its command line;
//! tests and the library build them directly. Each parses from and prints as the spelling
//! the command line uses (`recorded`, `x2`, `fail`), so they serialize the same way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use llmsim_snapshot::config::FaultRule;
use llmsim_snapshot::signature::Repeat;
use serde::{Deserialize, Serialize};

use crate::rate_limit::RateLimit;

/// Errors from parsing an option value.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// A pace is not `recorded`, `model`, `instant` or `xN` with N a positive finite number.
    #[error(
        "unknown pace {value:?}: expected recorded, model, instant or xN (for example x2 or x0.5)"
    )]
    Pace {
        /// The value given.
        value: String,
    },
    /// A miss policy is not `fail`, `passthrough` or `record`.
    #[error("unknown miss policy {value:?}: expected fail, passthrough or record")]
    OnMiss {
        /// The value given.
        value: String,
    },
}

/// How server-sent events are paced on replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pace {
    /// Each event at its recorded offset from the request's arrival.
    #[default]
    Recorded,
    /// Each stream's time to first token and tokens per second drawn from the recording's
    /// own distributions for its provider and model ([`crate::latency`]); recorded offsets
    /// where the model has no measurement.
    Model,
    /// Every event at once.
    Instant,
    /// Recorded offsets divided by the factor: `x2` is twice as fast, `x0.5` half as fast.
    Factor(f64),
}

impl Pace {
    /// When something recorded at `offset_ms` after the request started goes out, relative
    /// to the request's arrival; `None` means at once.
    pub fn delay(self, offset_ms: f64) -> Option<Duration> {
        let ms = match self {
            Self::Recorded | Self::Model => offset_ms,
            Self::Instant => return None,
            Self::Factor(factor) => offset_ms / factor,
        };
        // Recorded offsets are finite (the writer refuses others), but a hand edit may not be.
        (ms.is_finite() && ms > 0.0).then(|| Duration::from_secs_f64(ms.min(86_400_000.0) / 1e3))
    }
}

impl FromStr for Pace {
    type Err = OptionsError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "recorded" => Ok(Self::Recorded),
            "model" => Ok(Self::Model),
            "instant" => Ok(Self::Instant),
            _ => value
                .strip_prefix('x')
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(Self::Factor)
                .ok_or_else(|| OptionsError::Pace {
                    value: value.to_owned(),
                }),
        }
    }
}

impl fmt::Display for Pace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Recorded => f.write_str("recorded"),
            Self::Model => f.write_str("model"),
            Self::Instant => f.write_str("instant"),
            Self::Factor(factor) => write!(f, "x{factor}"),
        }
    }
}

impl TryFrom<String> for Pace {
    type Error = OptionsError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Pace> for String {
    fn from(pace: Pace) -> Self {
        pace.to_string()
    }
}

/// What a request with no recording gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMiss {
    /// A provider-shaped error naming the closest recording; the run exits nonzero.
    #[default]
    Fail,
    /// Forward to the real host and stream its answer back.
    Passthrough,
    /// Forward, and append the new exchange to the snapshot, redacted as capture does.
    Record,
}

impl FromStr for OnMiss {
    type Err = OptionsError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "fail" => Ok(Self::Fail),
            "passthrough" => Ok(Self::Passthrough),
            "record" => Ok(Self::Record),
            _ => Err(OptionsError::OnMiss {
                value: value.to_owned(),
            }),
        }
    }
}

impl fmt::Display for OnMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fail => "fail",
            Self::Passthrough => "passthrough",
            Self::Record => "record",
        })
    }
}

/// How replay answers requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayOptions {
    /// Pacing of server-sent events.
    pub pace: Pace,
    /// What a signature gets once its recorded exchanges are used up.
    pub repeat: Repeat,
    /// What a request with no recording gets.
    pub on_miss: OnMiss,
    /// Match a request whose host is not a recorded host (the listener's own address in
    /// `--listen` mode, `localhost`) against every recorded host. Off when the kernel
    /// redirect supplies real host names, so an unrecorded host is a miss.
    pub any_host: bool,
    /// Largest request body read; a larger one gets 413.
    pub max_request_body: usize,
}

impl ReplayOptions {
    /// 64 MiB: far above any LLM request, low enough that a runaway client cannot exhaust
    /// memory.
    pub const DEFAULT_MAX_REQUEST_BODY: usize = 64 << 20;

    /// The default options with `any_host` set, for `--listen` mode.
    pub fn listen() -> Self {
        Self {
            any_host: true,
            ..Self::default()
        }
    }

    /// The body limit, defaulted when zero.
    pub fn body_limit(&self) -> usize {
        if self.max_request_body == 0 {
            Self::DEFAULT_MAX_REQUEST_BODY
        } else {
            self.max_request_body
        }
    }
}

/// Load-test settings: faults to inject beyond `llmsim.toml`'s, the seed, and rate limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// `--fault` rules, tried after the snapshot's `[faults]` rules.
    pub faults: Vec<FaultRule>,
    /// `--seed`: overrides `[faults] seed`; seeds faults and `--pace model`.
    pub seed: Option<u64>,
    /// `--rate-limit` per provider.
    pub rate_limits: Vec<RateLimit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_pace_parses_and_prints() {
        assert_eq!("model".parse::<Pace>().unwrap(), Pace::Model);
        assert_eq!(Pace::Model.to_string(), "model");
        assert_eq!(Pace::Model.delay(250.0), Some(Duration::from_millis(250)));
    }

    #[test]
    fn pace_parses_and_prints() {
        for (text, pace) in [
            ("recorded", Pace::Recorded),
            ("instant", Pace::Instant),
            ("x2", Pace::Factor(2.0)),
            ("x0.5", Pace::Factor(0.5)),
        ] {
            assert_eq!(text.parse::<Pace>().unwrap(), pace);
            assert_eq!(pace.to_string(), text);
        }
        for bad in ["", "x", "x0", "x-1", "xinf", "xNaN", "fast", "2"] {
            assert!(bad.parse::<Pace>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pace_scales_offsets() {
        assert_eq!(
            Pace::Recorded.delay(250.0),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            Pace::Factor(2.0).delay(250.0),
            Some(Duration::from_millis(125))
        );
        assert_eq!(Pace::Instant.delay(250.0), None);
        assert_eq!(Pace::Recorded.delay(0.0), None);
        assert_eq!(Pace::Recorded.delay(-3.0), None);
        assert_eq!(Pace::Recorded.delay(f64::NAN), None);
    }

    #[test]
    fn options_serde_uses_command_line_spellings() {
        let options: ReplayOptions = serde_json::from_value(serde_json::json!({
            "pace": "x4", "repeat": "cycle", "on_miss": "fail"
        }))
        .unwrap();
        assert_eq!(options.pace, Pace::Factor(4.0));
        assert_eq!(options.repeat, Repeat::Cycle);
        assert_eq!(
            options.body_limit(),
            ReplayOptions::DEFAULT_MAX_REQUEST_BODY
        );
        let back = serde_json::to_value(options).unwrap();
        assert_eq!(back["pace"], "x4");
        assert!(
            serde_json::from_value::<ReplayOptions>(serde_json::json!({"pace": "x0"})).is_err()
        );
        assert_eq!("record".parse::<OnMiss>().unwrap(), OnMiss::Record);
        assert!("sometimes".parse::<OnMiss>().is_err());
    }
}
