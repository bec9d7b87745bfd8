//! The driver's Prometheus metrics (`--metrics ADDR`), named after the OpenTelemetry
//! HTTP client conventions where one fits:
//!
//! - `http_client_request_duration_seconds` (histogram, `http.client.request.duration`):
//!   each answered request, from its start (open loop: its scheduled start) to the last
//!   byte of its answer;
//! - `llmsim_drive_requests_total{outcome}` (counter): every finished request, `outcome`
//!   `ok`, `difference` (answered, but not as recorded), or the error kind (`connect`,
//!   `timeout`, `http`);
//! - `llmsim_drive_in_flight` (gauge): requests sent and not yet answered.
//!
//! They are updated where the summary is tallied ([`crate::run`]), from the same
//! events, so a scrape taken when the run ends agrees with the summary.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::exposition::Exposed;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Every outcome, each counted from zero so that a scrape lists them all.
pub const OUTCOMES: [&str; 5] = ["ok", "difference", "connect", "timeout", "http"];

/// The driver's metrics.
#[derive(Debug)]
pub struct DriveMetrics {
    registry: Registry,
    duration: Histogram,
    /// The counter of each of [`OUTCOMES`], looked up once.
    outcomes: [Counter; 5],
    in_flight: Gauge,
}

impl Default for DriveMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DriveMetrics {
    /// Registers every metric, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // 100 µs to about 100 s.
        let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 21));
        let requests = Family::<OutcomeLabels, Counter>::default();
        let in_flight = Gauge::default();
        registry.register_with_unit(
            "http_client_request_duration",
            "Time from a request's (scheduled) start to the last byte of its answer",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "llmsim_drive_requests",
            "Finished requests by outcome: ok, difference, or the error kind",
            requests.clone(),
        );
        registry.register(
            "llmsim_drive_in_flight",
            "Requests sent and not yet answered",
            in_flight.clone(),
        );
        let outcomes =
            OUTCOMES.map(|outcome| requests.get_or_create(&OutcomeLabels { outcome }).clone());
        Self {
            registry,
            duration,
            outcomes,
            in_flight,
        }
    }

    /// A request is going out.
    pub fn started(&self) {
        self.in_flight.inc();
    }

    /// A request finished with `outcome`, one of [`OUTCOMES`]; `latency` when it was
    /// answered.
    pub fn finished(&self, outcome: &str, latency: Option<Duration>) {
        self.in_flight.dec();
        if let Some(latency) = latency {
            self.duration.observe(latency.as_secs_f64());
        }
        if let Some(n) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[n].inc();
        }
    }
}

impl Exposed for DriveMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_after_the_http_client_conventions() {
        let metrics = DriveMetrics::new();
        metrics.started();
        metrics.finished("ok", Some(Duration::from_millis(3)));
        metrics.started();
        metrics.finished("timeout", None);
        let text = crate::exposition::encode(&[&metrics]);
        for line in [
            "llmsim_drive_requests_total{outcome=\"ok\"} 1",
            "llmsim_drive_requests_total{outcome=\"timeout\"} 1",
            "llmsim_drive_requests_total{outcome=\"http\"} 0",
            "http_client_request_duration_seconds_count 1",
            "llmsim_drive_in_flight 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
