//! Per-run statistics and the end-of-run report: requests served per provider and per
//! endpoint, repeats, misses with their field diffs, answers that failed, and the wall time
//! saved against the recorded latencies (recorded `duration_ms` of every served exchange,
//! less the time replay actually took to serve them), and under `--on-miss
//! passthrough|record` the requests forwarded to the real host, those recorded, what they
//! cost live, and forwards that failed or that `--budget` refused; the faults injected, by
//! kind, and the requests a simulated rate limit refused; and TLS clients that refused the
//! replay CA (apps with roots of their own), which fail the run. [`Stats`] is shared by
//! every connection and recorded by the engine alone ([`crate::engine`]), which also updates
//! the Prometheus metrics from the same events when `--metrics` asked for them; [`Report`]
//! is a copy taken at the end and printed by the binary.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use llmsim_snapshot::config::FaultKind;
use llmsim_snapshot::ledger::{CallLine, Totals};
use llmsim_snapshot::provider::Provider;
use serde::Serialize;

use crate::faults::RequestFacts;
use crate::metrics::{Metrics, ModelLabels};

/// A request that matched no recording.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MissRecord {
    /// The request, `METHOD host/path?query`.
    pub request: String,
    /// Why it missed, one line.
    pub reason: String,
    /// The closest recorded exchange file, relative to the snapshot directory.
    pub closest: Option<String>,
    /// How the request differs from that recording, one field per line.
    pub diffs: Vec<String>,
}

impl fmt::Display for MissRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.request, self.reason)?;
        if let Some(closest) = &self.closest {
            write!(f, "; closest recording {closest}")?;
        }
        for diff in &self.diffs {
            write!(f, "\n    {diff}")?;
        }
        Ok(())
    }
}

/// The sentence the report gives for a client that refused the replay CA.
pub const REJECTED_CA_CAUSE: &str = "the client's TLS stack does not read the system trust store";

/// A TLS client that ended the handshake with a certificate alert: it does not trust the
/// replay CA, whatever replayd put in its environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedCa {
    /// The client's pid, when its process could be found.
    pub pid: Option<u32>,
    /// The client's command name (`/proc/PID/comm`), when its process could be found.
    pub command: Option<String>,
    /// The server name the client asked for (SNI), when it sent one.
    pub sni: Option<String>,
    /// The TLS alert it sent, as rustls names it (`UnknownCA`, `CertificateUnknown`, ...).
    pub alert: String,
}

impl fmt::Display for RejectedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pid, &self.command) {
            (Some(pid), Some(command)) => write!(f, "pid {pid} ({command})")?,
            (Some(pid), None) => write!(f, "pid {pid}")?,
            _ => f.write_str("a client (process not found)")?,
        }
        write!(
            f,
            " rejected the replay CA for {} (alert {}): {REJECTED_CA_CAUSE}",
            self.sni.as_deref().unwrap_or("a connection without SNI"),
            self.alert
        )
    }
}

/// One row of the served table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServedRow {
    /// The provider of the served exchanges.
    pub provider: Provider,
    /// `METHOD /path`, query string left out.
    pub endpoint: String,
    /// How many requests it served.
    pub count: u64,
}

/// A copy of the statistics, for printing at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// Served requests per provider and endpoint, sorted.
    pub served: Vec<ServedRow>,
    /// Served requests in total.
    pub total_served: u64,
    /// Served requests that reused a recording already served (`--repeat last|cycle`).
    pub repeats: u64,
    /// Requests with no recording, in arrival order.
    pub misses: Vec<MissRecord>,
    /// Requests whose recording could not be sent (a broken snapshot file).
    pub snapshot_errors: u64,
    /// Requests refused because the app sent something unusable (a 400 or 413).
    pub bad_requests: u64,
    /// Requests replayd failed to answer through its own fault.
    pub internal_errors: u64,
    /// The recorded latencies of the served exchanges, added up.
    pub recorded_latency: Duration,
    /// How long serving them took.
    pub serve_time: Duration,
    /// Tokens and cost of the served exchanges: what the run did not spend.
    pub ledger: Totals,
    /// Misses forwarded to the real host and answered (`--on-miss passthrough|record`).
    pub forwarded: u64,
    /// Of those, the ones appended to the snapshot (`--on-miss record`).
    pub recorded: u64,
    /// Misses whose forward failed (the app got a 502).
    pub forward_errors: u64,
    /// Misses refused because the `--budget` was used up.
    pub budget_refused: u64,
    /// The `--budget` in dollars, once a refusal reported it.
    pub budget_usd: Option<f64>,
    /// Tokens and cost of the forwarded exchanges: what the run spent live.
    pub live: Totals,
    /// Injected faults by kind (`[faults]`, `--fault`).
    pub faults: BTreeMap<FaultKind, u64>,
    /// Requests refused with a 429 by a simulated rate limit (`--rate-limit`).
    pub rate_limited: u64,
    /// TLS clients that refused the replay CA, in arrival order.
    pub rejected_ca: Vec<RejectedCa>,
}

impl Report {
    /// Recorded latency minus serve time, never negative.
    pub fn wall_time_saved(&self) -> Duration {
        self.recorded_latency.saturating_sub(self.serve_time)
    }

    /// Whether the run failed: a miss, or a recording that could not be sent.
    pub fn failed(&self) -> bool {
        !self.misses.is_empty()
            || self.snapshot_errors > 0
            || self.internal_errors > 0
            || self.forward_errors > 0
            || self.budget_refused > 0
            || !self.rejected_ca.is_empty()
    }
}

impl fmt::Display for Report {
    /// Lines starting `replayd: `, the miss diffs indented below their miss.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replayd: served {} requests ({} repeats), {} misses",
            self.total_served,
            self.repeats,
            self.misses.len()
        )?;
        for row in &self.served {
            writeln!(
                f,
                "replayd:   {:<10} {:<45} {}",
                row.provider.as_str(),
                row.endpoint,
                row.count
            )?;
        }
        for miss in &self.misses {
            writeln!(f, "replayd: miss: {miss}")?;
        }
        if self.snapshot_errors > 0 {
            writeln!(
                f,
                "replayd: {} requests matched a recording that could not be sent",
                self.snapshot_errors
            )?;
        }
        if self.bad_requests > 0 {
            writeln!(
                f,
                "replayd: {} malformed requests refused",
                self.bad_requests
            )?;
        }
        if self.internal_errors > 0 {
            writeln!(f, "replayd: {} internal errors", self.internal_errors)?;
        }
        if !self.faults.is_empty() {
            let kinds: Vec<String> = self
                .faults
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            writeln!(
                f,
                "replayd: injected {} faults: {}",
                self.faults.values().sum::<u64>(),
                kinds.join(", ")
            )?;
        }
        if self.rate_limited > 0 {
            writeln!(
                f,
                "replayd: rate-limited {} requests (429)",
                self.rate_limited
            )?;
        }
        for rejected in &self.rejected_ca {
            writeln!(f, "replayd: {rejected}")?;
        }
        if self.ledger.calls > 0 {
            writeln!(f, "replayd: not spent: {}", self.ledger)?;
        }
        if self.forwarded > 0 || self.forward_errors > 0 || self.budget_refused > 0 {
            writeln!(
                f,
                "replayd: passed through {} requests to the real API ({} recorded), {} failed",
                self.forwarded, self.recorded, self.forward_errors
            )?;
        }
        if self.live.calls > 0 {
            writeln!(f, "replayd: live spend: {}", self.live)?;
        }
        if self.budget_refused > 0 {
            let budget = self
                .budget_usd
                .map_or_else(String::new, |b| format!(" of ${b:.4}"));
            writeln!(
                f,
                "replayd: budget{budget} exhausted after {} forwards (live spend ${:.4}): \
                 refused {} requests",
                self.forwarded, self.live.cost_usd, self.budget_refused
            )?;
        }
        writeln!(
            f,
            "replayd: wall time saved {:.3} s (recorded {:.3} s, served in {:.3} s)",
            self.wall_time_saved().as_secs_f64(),
            self.recorded_latency.as_secs_f64(),
            self.serve_time.as_secs_f64()
        )
    }
}

/// What every served request adds: the counts on the hot path.
#[derive(Debug, Default)]
struct Served {
    /// By provider, then by endpoint: looked up by the endpoint's text, its reference count
    /// is added to only when a thread first counts it.
    by_endpoint: BTreeMap<Provider, BTreeMap<Arc<str>, u64>>,
    repeats: u64,
    recorded_latency: Duration,
    ledger: Totals,
    /// From each answer's arrival to its last byte, in nanoseconds.
    serve_nanos: u64,
}

impl Served {
    fn merge(&mut self, other: &Self) {
        for (provider, endpoints) in &other.by_endpoint {
            let mine = self.by_endpoint.entry(*provider).or_default();
            for (endpoint, count) in endpoints {
                *mine.entry(endpoint.clone()).or_default() += count;
            }
        }
        self.repeats += other.repeats;
        self.recorded_latency = self.recorded_latency.saturating_add(other.recorded_latency);
        self.ledger += other.ledger;
        self.serve_nanos = self.serve_nanos.saturating_add(other.serve_nanos);
    }
}

/// One thread's [`Served`], alone on its cache lines with its reference counts. Every
/// served request adds to it twice (when it is matched and when its answer ends), from the
/// thread serving it; one lock and one reference count shared by the serving threads moved
/// between their cores at every request.
#[derive(Debug, Default)]
#[repr(align(128))]
struct ServedShard(Mutex<Served>);

impl ServedShard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Served> {
        // Counters hold no invariant a panic elsewhere could break.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Shards of [`Served`]; a thread takes the one at its index, so threads share one only
/// past this many.
const SERVED_SHARDS: usize = 64;

/// This thread's shard of [`Served`]: threads are numbered as they first count.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SERVED_SHARDS;
    }
    INDEX.with(|index| *index)
}

/// Everything else, rare: one lock.
#[derive(Debug, Default)]
struct Counts {
    misses: Vec<MissRecord>,
    snapshot_errors: u64,
    bad_requests: u64,
    internal_errors: u64,
    forwarded: u64,
    recorded: u64,
    forward_errors: u64,
    budget_refused: u64,
    budget_usd: Option<f64>,
    live: Totals,
    faults: BTreeMap<FaultKind, u64>,
    rate_limited: u64,
    rejected_ca: Vec<RejectedCa>,
}

/// A served recording, for [`Stats::served`]. Borrowed from the recording: counting one
/// allocates nothing and touches no reference count that other serving threads touch too.
#[derive(Clone, Copy, Debug)]
pub struct ServedCall<'a> {
    /// Its provider.
    pub provider: Provider,
    /// `METHOD /path`.
    pub endpoint: &'a Arc<str>,
    /// Whether the repeat policy chose it.
    pub repeated: bool,
    /// The exchange as the ledger sees it: recorded duration, tokens, cost.
    pub call: &'a CallLine,
}

/// What happened to one request other than a served recording, for [`Stats::record`].
#[derive(Clone, Debug)]
pub enum Event {
    /// No recording matched.
    Miss(MissRecord),
    /// The matched recording could not be sent.
    SnapshotError,
    /// The app's request was refused.
    BadRequest,
    /// replayd failed.
    InternalError,
    /// A miss was forwarded to the real host and its answer has ended.
    Forwarded {
        /// The provider, from the host.
        provider: Provider,
        /// `METHOD /path`.
        endpoint: String,
        /// Whether it was appended to the snapshot.
        recorded: bool,
        /// The exchange as the ledger sees it: duration, tokens, live cost.
        call: Box<CallLine>,
    },
    /// Forwarding a miss failed.
    ForwardFailed,
    /// A miss was not forwarded: the budget is used up.
    BudgetRefused {
        /// The budget in dollars.
        budget_usd: f64,
    },
    /// A fault was injected.
    Fault {
        /// Its kind.
        kind: FaultKind,
        /// Whether it replaced the answer (an error status, a closed connection) rather
        /// than changing how the recording went out (counted as served too).
        replaced: bool,
    },
    /// A simulated rate limit refused the request.
    RateLimited,
    /// A TLS client refused the replay CA (not a request: its handshake failed).
    RejectedCa(RejectedCa),
}

/// Statistics shared by every connection of a run.
#[derive(Debug)]
pub struct Stats {
    served: Box<[Arc<ServedShard>]>,
    counts: Mutex<Counts>,
    /// The Prometheus metrics updated from the same events, with `--metrics`.
    metrics: Option<Arc<Metrics>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            served: (0..SERVED_SHARDS).map(|_| Arc::default()).collect(),
            counts: Mutex::default(),
            metrics: None,
        }
    }
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty statistics that also update `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    /// The metrics updated with the statistics, if any.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Counts one request (the engine's to call).
    pub fn record(&self, event: Event) {
        self.record_for(event, None);
    }

    /// Counts one request whose provider and model are `facts`, for the metrics' labels
    /// (the engine's to call).
    pub fn record_for(&self, event: Event, facts: Option<&RequestFacts>) {
        if let Some(metrics) = &self.metrics {
            observe(metrics, &event, facts);
        }
        let mut counts = self.lock();
        match event {
            Event::Miss(miss) => counts.misses.push(miss),
            Event::SnapshotError => counts.snapshot_errors += 1,
            Event::BadRequest => counts.bad_requests += 1,
            Event::InternalError => counts.internal_errors += 1,
            Event::Forwarded { recorded, call, .. } => {
                counts.forwarded += 1;
                counts.recorded += u64::from(recorded);
                counts.live.add(&call);
            }
            Event::ForwardFailed => counts.forward_errors += 1,
            Event::BudgetRefused { budget_usd } => {
                counts.budget_refused += 1;
                counts.budget_usd = Some(budget_usd);
            }
            Event::Fault { kind, .. } => *counts.faults.entry(kind).or_default() += 1,
            Event::RateLimited => counts.rate_limited += 1,
            Event::RejectedCa(rejected) => counts.rejected_ca.push(rejected),
        }
    }

    /// Counts one served recording, on the counts of the thread serving it (the engine's to
    /// call), with `facts` for the metrics' labels.
    pub fn served(&self, served: ServedCall<'_>, facts: Option<&RequestFacts>) {
        let ServedCall {
            provider,
            endpoint,
            repeated,
            call,
        } = served;
        if let Some(metrics) = &self.metrics {
            let model = call
                .model
                .as_deref()
                .or_else(|| facts.and_then(|f| f.model.as_deref()));
            metrics.request(Some(provider), model, "served");
            if let Some(usage) = &call.usage {
                metrics.tokens(
                    &ModelLabels::new(provider, model),
                    usage.input_tokens,
                    usage.output_tokens,
                );
            }
        }
        let mut counts = self.served[shard_index()].lock();
        let endpoints = counts.by_endpoint.entry(provider).or_default();
        match endpoints.get_mut(&**endpoint) {
            Some(count) => *count += 1,
            None => {
                endpoints.insert(endpoint.clone(), 1);
            }
        }
        counts.repeats += u64::from(repeated);
        counts.ledger.add(call);
        let recorded_ms = call.duration_ms;
        if recorded_ms.is_finite() && recorded_ms > 0.0 {
            // A hand-edited file may hold any number: saturate, never panic.
            let recorded = Duration::try_from_secs_f64(recorded_ms / 1e3).unwrap_or(Duration::MAX);
            counts.recorded_latency = counts.recorded_latency.saturating_add(recorded);
        }
    }

    /// A clock for one answer, started at its request's arrival: dropped at the answer's
    /// end, it adds the time in between to the serve time, on this thread's counts.
    pub fn serve_clock(&self, started: Instant) -> ServeClock {
        ServeClock {
            counts: self.served[shard_index()].clone(),
            started,
        }
    }

    /// A copy of the statistics so far.
    pub fn report(&self) -> Report {
        let mut served = Served::default();
        for shard in &self.served {
            served.merge(&shard.lock());
        }
        let counts = self.lock();
        Report {
            served: served
                .by_endpoint
                .iter()
                .flat_map(|(provider, endpoints)| {
                    endpoints.iter().map(|(endpoint, count)| ServedRow {
                        provider: *provider,
                        endpoint: endpoint.to_string(),
                        count: *count,
                    })
                })
                .collect(),
            total_served: served.by_endpoint.values().flat_map(BTreeMap::values).sum(),
            repeats: served.repeats,
            misses: counts.misses.clone(),
            snapshot_errors: counts.snapshot_errors,
            bad_requests: counts.bad_requests,
            internal_errors: counts.internal_errors,
            recorded_latency: served.recorded_latency,
            serve_time: Duration::from_nanos(served.serve_nanos),
            ledger: served.ledger,
            forwarded: counts.forwarded,
            recorded: counts.recorded,
            forward_errors: counts.forward_errors,
            budget_refused: counts.budget_refused,
            budget_usd: counts.budget_usd,
            live: counts.live,
            faults: counts.faults.clone(),
            rate_limited: counts.rate_limited,
            rejected_ca: counts.rejected_ca.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counters hold no invariant a panic elsewhere could break.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Adds the time from a request's arrival to its answer's end to the serve time, when
/// dropped ([`Stats::serve_clock`]).
#[derive(Debug)]
pub struct ServeClock {
    counts: Arc<ServedShard>,
    started: Instant,
}

impl Drop for ServeClock {
    fn drop(&mut self) {
        // 2^64 ns is 584 years of serving: the total does not wrap.
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut counts = self.counts.lock();
        counts.serve_nanos = counts.serve_nanos.saturating_add(nanos);
    }
}

/// Updates the metrics from one event.
fn observe(metrics: &Metrics, event: &Event, facts: Option<&RequestFacts>) {
    let provider = facts.map(|f| f.provider);
    let model = facts.and_then(|f| f.model.as_deref());
    match event {
        Event::Miss(_) => {
            metrics.miss();
            metrics.request(provider, model, "miss");
        }
        Event::SnapshotError => metrics.request(provider, model, "snapshot_error"),
        Event::BadRequest => metrics.request(provider, model, "bad_request"),
        // Counted besides the request's own outcome; and a client that rejected the replay
        // CA made no request: its handshake failed, and the end report names it.
        Event::InternalError | Event::RejectedCa(_) => {}
        Event::Forwarded { provider, call, .. } => {
            metrics.request(
                Some(*provider),
                call.model.as_deref().or(model),
                "forwarded",
            );
        }
        Event::ForwardFailed => metrics.request(provider, model, "forward_failed"),
        Event::BudgetRefused { .. } => metrics.request(provider, model, "budget_refused"),
        Event::Fault { kind, replaced } => {
            metrics.fault(*kind);
            if *replaced {
                metrics.request(provider, model, "fault");
            }
        }
        Event::RateLimited => metrics.request(provider, model, "rate_limited"),
    }
}

#[cfg(test)]
mod tests {
    use llmsim_snapshot::provider::Endpoint;

    use super::*;

    fn call(duration_ms: f64) -> Box<CallLine> {
        Box::new(CallLine {
            seq: 0,
            provider: Provider::OpenAi,
            model: Some("gpt-4o-mini".into()),
            endpoint: Endpoint::ChatCompletions,
            status: 200,
            started_at: String::new(),
            start_offset_ms: 0.0,
            duration_ms,
            ttft_ms: None,
            streamed: false,
            incomplete: false,
            usage: None,
            cost_usd: None,
        })
    }

    /// Counts one served recording of `recorded_ms`.
    fn serve(stats: &Stats, provider: Provider, endpoint: &str, repeated: bool, recorded_ms: f64) {
        let served = ServedCall {
            provider,
            endpoint: &endpoint.into(),
            repeated,
            call: &call(recorded_ms),
        };
        stats.served(served, None);
    }

    #[test]
    fn counts_per_provider_and_endpoint() {
        let stats = Stats::new();
        let chat = "POST /v1/chat/completions";
        serve(&stats, Provider::OpenAi, chat, false, 500.0);
        // From another thread: its counts are merged into the report.
        std::thread::scope(|s| {
            s.spawn(|| serve(&stats, Provider::OpenAi, chat, true, 500.0));
        });
        serve(
            &stats,
            Provider::Anthropic,
            "POST /v1/messages",
            false,
            500.0,
        );
        stats.record(Event::BadRequest);
        let started = Instant::now()
            .checked_sub(Duration::from_millis(100))
            .unwrap();
        drop(stats.serve_clock(started));
        let report = stats.report();
        assert_eq!(report.total_served, 3);
        assert_eq!(report.repeats, 1);
        assert_eq!(
            report.served,
            [
                ServedRow {
                    provider: Provider::OpenAi,
                    endpoint: "POST /v1/chat/completions".into(),
                    count: 2
                },
                ServedRow {
                    provider: Provider::Anthropic,
                    endpoint: "POST /v1/messages".into(),
                    count: 1
                },
            ]
        );
        assert_eq!(report.recorded_latency, Duration::from_millis(1500));
        // The clock ran for 100 ms and the few microseconds until its drop.
        let saved = report.wall_time_saved();
        assert!(
            saved <= Duration::from_millis(1400) && saved > Duration::from_millis(1399),
            "{saved:?}"
        );
        assert!(
            !report.failed(),
            "a refused malformed request is the app's problem"
        );
        let text = report.to_string();
        assert!(
            text.starts_with("replayd: served 3 requests (1 repeats), 0 misses\n"),
            "{text}"
        );
        assert!(text.contains("wall time saved 1.400 s"), "{text}");
    }

    #[test]
    fn misses_fail_the_run_and_show_their_diffs() {
        let stats = Stats::new();
        stats.record(Event::Miss(MissRecord {
            request: "POST api.openai.com/v1/chat/completions".into(),
            reason: "no recording matches".into(),
            closest: Some("exchanges/000001-openai-post-v1-chat-completions.json".into()),
            diffs: vec![r#"/messages/0/content: recorded "a", requested "b""#.into()],
        }));
        let report = stats.report();
        assert!(report.failed());
        let text = report.to_string();
        assert!(
            text.contains(
                "replayd: miss: POST api.openai.com/v1/chat/completions: no recording matches; \
                 closest recording exchanges/000001-openai-post-v1-chat-completions.json\n    \
                 /messages/0/content: recorded \"a\", requested \"b\""
            ),
            "{text}"
        );
        assert_eq!(report.wall_time_saved(), Duration::ZERO);
    }

    #[test]
    fn forwards_spend_and_budget_refusals_are_reported() {
        let stats = Stats::new();
        let mut priced = call(300.0);
        priced.cost_usd = Some(0.25);
        priced.usage = Some(llmsim_snapshot::model::TokenUsage {
            input_tokens: 10,
            output_tokens: 5,
            ..Default::default()
        });
        stats.record(Event::Forwarded {
            provider: Provider::OpenAi,
            endpoint: "POST /v1/chat/completions".into(),
            recorded: true,
            call: priced,
        });
        stats.record(Event::Forwarded {
            provider: Provider::OpenAi,
            endpoint: "POST /v1/chat/completions".into(),
            recorded: false,
            call: call(100.0),
        });
        let report = stats.report();
        assert_eq!((report.forwarded, report.recorded), (2, 1));
        assert!(!report.failed(), "answered forwards are not failures");
        let text = report.to_string();
        assert!(
            text.contains("passed through 2 requests to the real API (1 recorded), 0 failed"),
            "{text}"
        );
        assert!(text.contains("replayd: live spend: "), "{text}");
        stats.record(Event::BudgetRefused { budget_usd: 0.25 });
        stats.record(Event::ForwardFailed);
        let report = stats.report();
        assert!(report.failed());
        let text = report.to_string();
        assert!(
            text.contains(
                "budget of $0.2500 exhausted after 2 forwards (live spend $0.2500): refused 1 requests"
            ),
            "{text}"
        );
        assert!(text.contains("1 failed"), "{text}");
    }

    #[test]
    fn faults_and_rate_limits_are_counted_and_reported() {
        let metrics = Arc::new(Metrics::new());
        let stats = Stats::with_metrics(metrics.clone());
        let facts = RequestFacts {
            provider: Provider::OpenAi,
            endpoint: Endpoint::ChatCompletions,
            path: "/v1/chat/completions".into(),
            model: Some("gpt-4o-mini".into()),
        };
        for kind in [
            FaultKind::RateLimited,
            FaultKind::RateLimited,
            FaultKind::Reset,
        ] {
            stats.record_for(
                Event::Fault {
                    kind,
                    replaced: true,
                },
                Some(&facts),
            );
        }
        stats.record_for(
            Event::Fault {
                kind: FaultKind::Cut,
                replaced: false,
            },
            Some(&facts),
        );
        stats.record_for(Event::RateLimited, Some(&facts));
        let report = stats.report();
        assert!(
            !report.failed(),
            "injected faults are what the run asked for"
        );
        assert_eq!(report.faults[&FaultKind::RateLimited], 2);
        let text = report.to_string();
        assert!(
            text.contains("replayd: injected 4 faults: 429 2, reset 1, cut 1\n"),
            "{text}"
        );
        assert!(
            text.contains("replayd: rate-limited 1 requests (429)\n"),
            "{text}"
        );
        let scraped = metrics.encode();
        for line in [
            "llmsim_replay_faults_total{kind=\"429\"} 2",
            "llmsim_replay_faults_total{kind=\"cut\"} 1",
            "llmsim_replay_requests_total{provider=\"openai\",model=\"gpt-4o-mini\",outcome=\"fault\"} 3",
            "llmsim_replay_requests_total{provider=\"openai\",model=\"gpt-4o-mini\",outcome=\"rate_limited\"} 1",
        ] {
            assert!(
                scraped.lines().any(|l| l == line),
                "no {line} in\n{scraped}"
            );
        }
    }

    #[test]
    fn a_client_that_rejects_the_ca_fails_the_run_and_is_named() {
        let stats = Stats::new();
        stats.record(Event::RejectedCa(RejectedCa {
            pid: Some(4242),
            command: Some("java".into()),
            sni: Some("api.openai.com".into()),
            alert: "CertificateUnknown".into(),
        }));
        stats.record(Event::RejectedCa(RejectedCa {
            pid: None,
            command: None,
            sni: None,
            alert: "UnknownCA".into(),
        }));
        let report = stats.report();
        assert!(report.failed());
        let text = report.to_string();
        assert!(
            text.contains(
                "replayd: pid 4242 (java) rejected the replay CA for api.openai.com \
                 (alert CertificateUnknown): the client's TLS stack does not read the system trust store\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "replayd: a client (process not found) rejected the replay CA for a connection \
                 without SNI (alert UnknownCA): the client's TLS stack does not read the system trust store\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn absurd_recorded_latencies_saturate() {
        let stats = Stats::new();
        for recorded_ms in [1e300, 1e300, f64::NAN, -1.0] {
            serve(&stats, Provider::Generic, "GET /", false, recorded_ms);
        }
        assert_eq!(stats.report().recorded_latency, Duration::MAX);
    }
}
