//! The driver's options, one struct shared by `llmsim-agent replay` and `replayd --drive`
//! (with the `cli` feature it is a set of clap arguments both binaries flatten), and the
//! `--rate` value.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a `--rate` value is not one.
#[derive(Debug, thiserror::Error)]
#[error("invalid rate {value:?}: expected requests per second, as 20 or 20/s")]
pub struct RateError {
    /// The value given.
    pub value: String,
}

/// Requests started per second, in an open-loop run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate(f64);

impl Rate {
    /// Requests per second.
    pub fn per_second(self) -> f64 {
        self.0
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(value: &str) -> Result<Self, RateError> {
        let number = value.strip_suffix("/s").unwrap_or(value);
        match number.trim().parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Self(rate)),
            _ => Err(RateError {
                value: value.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// How the inbound requests are sent again: once each in recorded order by default (the
/// regression replay), or as a load test.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct DriveOptions {
    /// Send every recorded request N times (N copies).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))
    )]
    pub multiply: u64,
    /// Open loop: start R requests per second (20 or 20/s), latency measured from each
    /// request's scheduled start.
    #[cfg_attr(feature = "cli", arg(long, value_name = "R/s"))]
    pub rate: Option<Rate>,
    /// Requests in flight at once, each on its own connection (default 1, or 64 with
    /// --rate).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..))
    )]
    pub concurrency: Option<u32>,
    /// Keep sending the recorded requests, over and over, for D (30s, 2m).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "D", value_parser = humantime::parse_duration)
    )]
    pub duration: Option<Duration>,
    /// Make each copy's requests distinct: the string at this JSON pointer of the request
    /// body gets `-copyN` appended in copy N (the first copy, 0, is sent as recorded).
    /// Repeatable.
    #[cfg_attr(feature = "cli", arg(long, value_name = "POINTER"))]
    pub unique: Vec<String>,
    /// How long one request may take before it counts as a timeout.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "D", default_value = "60s", value_parser = humantime::parse_duration)
    )]
    pub timeout: Duration,
    /// Print the summary as one line of JSON on stdout instead of text.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
    /// With --metrics: keep serving the metrics for D after the run, so that a scraper
    /// sees the final numbers.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "D", value_parser = humantime::parse_duration)
    )]
    pub metrics_linger: Option<Duration>,
}

impl Default for DriveOptions {
    fn default() -> Self {
        Self {
            multiply: 1,
            rate: None,
            concurrency: None,
            duration: None,
            unique: Vec::new(),
            timeout: Duration::from_secs(60),
            json: false,
            metrics_linger: None,
        }
    }
}

impl DriveOptions {
    /// Connections used when `--rate` is given without `--concurrency`.
    pub const DEFAULT_OPEN_LOOP_CONCURRENCY: u32 = 64;

    /// Requests in flight at once.
    pub fn connections(&self) -> u32 {
        self.concurrency.unwrap_or(if self.rate.is_some() {
            Self::DEFAULT_OPEN_LOOP_CONCURRENCY
        } else {
            1
        })
    }

    /// Whether this is a load test rather than the plain regression replay.
    pub fn is_load(&self) -> bool {
        self.multiply > 1
            || self.rate.is_some()
            || self.concurrency.is_some()
            || self.duration.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second() {
        assert_eq!("20".parse::<Rate>().unwrap().per_second(), 20.0);
        assert_eq!("2.5/s".parse::<Rate>().unwrap().per_second(), 2.5);
        for bad in ["0", "-1", "fast", "20/m", "inf", ""] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn connections_default_by_loop() {
        let mut options = DriveOptions::default();
        assert_eq!(options.connections(), 1);
        assert!(!options.is_load());
        options.rate = Some(Rate(5.0));
        assert_eq!(
            options.connections(),
            DriveOptions::DEFAULT_OPEN_LOOP_CONCURRENCY
        );
        options.concurrency = Some(3);
        assert_eq!(options.connections(), 3);
        assert!(options.is_load());
    }
}
