//! Prometheus metrics (`--metrics ADDR`), kept with the `prometheus-client` crate and
//! served as its text exposition on `GET /metrics`. Names follow the OpenTelemetry `GenAI`
//! conventions where one fits, with the labels `gen_ai_system` and `gen_ai_request_model`:
//!
//! - `gen_ai_client_operation_duration_seconds` (histogram): a served answer, from the
//!   request's arrival to its last byte;
//! - `gen_ai_client_token_usage` (histogram, also by `gen_ai_token_type`: `input` or
//!   `output`): the recorded tokens of each served answer;
//! - `llmsim_replay_time_to_first_token_seconds` (histogram): a served stream, from the
//!   request's arrival to its first event;
//! - `llmsim_replay_active_streams` (gauge): streams being sent;
//! - `llmsim_replay_requests_total{provider, model, outcome}` (counter): every request,
//!   with `outcome` one of `served`, `miss`, `fault`, `rate_limited`, `forwarded`,
//!   `forward_failed`, `budget_refused`, `snapshot_error`, `bad_request`;
//! - `llmsim_replay_misses_total` (counter);
//! - `llmsim_replay_faults_total{kind}` (counter): injected faults, `kind` as `--fault`
//!   spells it (`429`, `cut`, ...).
//!
//! They are updated where the end-of-run report is counted ([`crate::report::Stats`]),
//! from the same events, so a scrape and the report agree; the timings come from the
//! served body ([`Observation`]). The endpoint is `llmsim_drive::exposition`'s, shared
//! with the load driver.

use std::sync::Arc;
use std::time::Instant;

use llmsim_drive::exposition::{self, Exposed};
use llmsim_snapshot::config::FaultKind;
use llmsim_snapshot::provider::Provider;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The OpenTelemetry `GenAI` labels of a model call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The provider, as OpenTelemetry names it (`openai`, `anthropic`, `gcp.gemini`).
    pub gen_ai_system: String,
    /// The model asked for; empty when the request named none.
    pub gen_ai_request_model: String,
}

impl ModelLabels {
    /// The labels of a call to `model` at `provider`.
    pub fn new(provider: Provider, model: Option<&str>) -> Self {
        Self {
            gen_ai_system: match provider {
                Provider::Gemini => "gcp.gemini".to_owned(),
                other => other.as_str().to_owned(),
            },
            gen_ai_request_model: model.unwrap_or_default().to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[expect(
    clippy::struct_field_names,
    reason = "the label names are OpenTelemetry's"
)]
struct TokenLabels {
    gen_ai_system: String,
    gen_ai_request_model: String,
    gen_ai_token_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: String,
    model: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    kind: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn tokens_histogram() -> Histogram {
    // 1 to about 4 million tokens, as OpenTelemetry advises for token usage.
    Histogram::new(exponential_buckets(1.0, 4.0, 12))
}

/// The run's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    duration: Histograms<ModelLabels>,
    tokens: Histograms<TokenLabels>,
    ttft: Histograms<ModelLabels>,
    active: Gauge,
    requests: Family<RequestLabels, Counter>,
    misses: Counter,
    faults: Family<FaultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let duration: Histograms<ModelLabels> = Family::new_with_constructor(seconds_histogram);
        let tokens: Histograms<TokenLabels> = Family::new_with_constructor(tokens_histogram);
        let ttft: Histograms<ModelLabels> = Family::new_with_constructor(seconds_histogram);
        let active = Gauge::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let misses = Counter::default();
        let faults = Family::<FaultLabels, Counter>::default();
        registry.register_with_unit(
            "gen_ai_client_operation_duration",
            "Duration of a served model call, from its arrival to its last byte",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "gen_ai_client_token_usage",
            "Recorded tokens of each served model call, by token type",
            tokens.clone(),
        );
        registry.register_with_unit(
            "llmsim_replay_time_to_first_token",
            "Time from a streamed request's arrival to its first event",
            Unit::Seconds,
            ttft.clone(),
        );
        registry.register(
            "llmsim_replay_active_streams",
            "Streamed answers being sent",
            active.clone(),
        );
        registry.register(
            "llmsim_replay_requests",
            "Requests by provider, model and outcome",
            requests.clone(),
        );
        registry.register(
            "llmsim_replay_misses",
            "Requests that matched no recording",
            misses.clone(),
        );
        registry.register(
            "llmsim_replay_faults",
            "Injected faults by kind",
            faults.clone(),
        );
        Self {
            registry,
            duration,
            tokens,
            ttft,
            active,
            requests,
            misses,
            faults,
        }
    }

    /// Counts one request's outcome.
    pub fn request(&self, provider: Option<Provider>, model: Option<&str>, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider
                    .map(Provider::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                model: model.unwrap_or_default().to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a miss.
    pub fn miss(&self) {
        self.misses.inc();
    }

    /// Counts an injected fault.
    pub fn fault(&self, kind: FaultKind) {
        self.faults
            .get_or_create(&FaultLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Records the tokens of a served call.
    pub fn tokens(&self, labels: &ModelLabels, input: u64, output: u64) {
        for (kind, count) in [("input", input), ("output", output)] {
            #[expect(
                clippy::cast_precision_loss,
                reason = "token counts are far below 2^52"
            )]
            let count = count as f64;
            self.tokens
                .get_or_create(&TokenLabels {
                    gen_ai_system: labels.gen_ai_system.clone(),
                    gen_ai_request_model: labels.gen_ai_request_model.clone(),
                    gen_ai_token_type: kind,
                })
                .observe(count);
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        exposition::encode(&[self])
    }

    /// Starts timing a served answer from `arrived`; a stream counts as active until
    /// the observation is dropped.
    pub fn observe(
        self: &Arc<Self>,
        labels: ModelLabels,
        arrived: Instant,
        stream: bool,
    ) -> Observation {
        if stream {
            self.active.inc();
        }
        Observation {
            metrics: self.clone(),
            labels,
            arrived,
            stream,
            first_sent: false,
        }
    }
}

/// The timing of one served answer, kept by its body: the first event's time, then on
/// drop (the body ended, or the app went away) the whole answer's.
#[derive(Debug)]
pub struct Observation {
    metrics: Arc<Metrics>,
    labels: ModelLabels,
    arrived: Instant,
    stream: bool,
    first_sent: bool,
}

impl Observation {
    /// A body frame is going out.
    pub fn frame_sent(&mut self) {
        if self.stream && !self.first_sent {
            self.first_sent = true;
            self.metrics
                .ttft
                .get_or_create(&self.labels)
                .observe(self.arrived.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.arrived.elapsed().as_secs_f64());
        if self.stream {
            self.metrics.active.dec();
        }
    }
}

impl Exposed for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_after_the_genai_conventions() {
        let metrics = Arc::new(Metrics::new());
        let labels = ModelLabels::new(Provider::OpenAi, Some("gpt-4o-mini"));
        metrics.request(Some(Provider::OpenAi), Some("gpt-4o-mini"), "served");
        metrics.fault(FaultKind::RateLimited);
        metrics.miss();
        metrics.tokens(&labels, 12, 34);
        {
            let mut observation = metrics.observe(labels, Instant::now(), true);
            observation.frame_sent();
            assert!(metrics.encode().contains("llmsim_replay_active_streams 1"));
        }
        let text = metrics.encode();
        for line in [
            "llmsim_replay_requests_total{provider=\"openai\",model=\"gpt-4o-mini\",outcome=\"served\"} 1",
            "llmsim_replay_faults_total{kind=\"429\"} 1",
            "llmsim_replay_misses_total 1",
            "llmsim_replay_active_streams 0",
            "gen_ai_client_operation_duration_seconds_count{gen_ai_system=\"openai\",gen_ai_request_model=\"gpt-4o-mini\"} 1",
            "llmsim_replay_time_to_first_token_seconds_count{gen_ai_system=\"openai\",gen_ai_request_model=\"gpt-4o-mini\"} 1",
            "gen_ai_client_token_usage_sum{gen_ai_system=\"openai\",gen_ai_request_model=\"gpt-4o-mini\",gen_ai_token_type=\"output\"} 34.0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
