//! The replay engine: built once at start-up from a snapshot directory, it reads and
//! validates every exchange file, signs each complete recorded exchange with the snapshot's
//! match rules as soon as it is parsed, prepares its response for sending, and indexes the
//! signatures. [`Engine::respond`] signs an incoming request the same way and gives either
//! the recorded exchange to serve (in recorded order, then as the repeat policy says) or,
//! for a miss, the closest recorded request and a field-level diff. Under `--on-miss
//! passthrough|record`, [`Engine::forward`] sends a miss to the real host through the
//! [`Upstream`], which hands the finished exchange back; one recorded during the run is then
//! served to later identical requests.
//!
//! Before the lookup, [`Engine::admit`] applies the load-test settings: a simulated rate
//! limit or an injected fault may answer instead of the recording (which then stays
//! unserved for the app's retry), or change how it goes out. Under `--pace model` the
//! engine keeps the recording's latency model and gives each stream its [`Schedule`].
//!
//! The run's [`Stats`] are recorded here and nowhere else: every lookup as it is decided,
//! every forward when it is refused, fails or ends, and the failures only the service sees
//! (an unreadable request, an answer it could not build) when the service reports them.
//! The engine knows nothing about sockets or HTTP framing; the service module does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use http::Response;
use http::header::{HeaderName, HeaderValue};
use llmsim_snapshot::authority::Authority;
use llmsim_snapshot::config::FaultKind;
use llmsim_snapshot::ledger::CallLine;
use llmsim_snapshot::model::{self, Direction, Exchange, Scheme};
use llmsim_snapshot::prices::PriceTable;
use llmsim_snapshot::provider::{ApiFamily, Endpoint, LimitKind, Provider};
use llmsim_snapshot::signature::{
    self, CanonicalRequest, CompiledRules, FieldDiff, Served, Signature, SignatureError,
    SignatureIndex, SignatureMemo,
};
use llmsim_snapshot::store::{SnapshotDir, StoreError};

use crate::body::ReplayBody;
use crate::faults::{self, Faults, Injected, RequestFacts, StreamFault};
use crate::latency::{LatencyModel, Schedule};
use crate::metrics::Metrics;
use crate::options::{LoadOptions, OnMiss, Pace, ReplayOptions};
use crate::rate_limit::{Limits, RateLimitError, RateLimiter};
use crate::report::{Event, MissRecord, RejectedCa, ServedCall, Stats};
use crate::request::ReplayRequest;
use crate::response::{PrepareError, PreparedBody, PreparedResponse};
use crate::upstream::{
    BudgetExhausted, ForwardError, Forwarded, Recording, Upstream, UpstreamAddr,
};

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The snapshot could not be loaded (a file that does not parse names itself).
    #[error(transparent)]
    Load(#[from] StoreError),
    /// The snapshot's `[match]` rules do not compile.
    #[error("the [match] rules of {path} are invalid")]
    Rules {
        /// The snapshot's `llmsim.toml`.
        path: PathBuf,
        /// What is wrong with them.
        #[source]
        source: SignatureError,
    },
    /// A `--rate-limit` cannot be set up.
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
}

/// What [`Engine::admit`] decided for a request, before any lookup.
#[derive(Debug)]
pub enum Admission {
    /// Look the recording up and serve it, changed by a stream fault if one fired.
    Serve(Option<StreamFault>),
    /// Answer this instead: an injected error status or a rate limit's 429 (boxed: the
    /// common case, serving, is small).
    Refuse(Box<Response<ReplayBody>>),
    /// Close the connection without an answer.
    Reset,
}

/// Why a miss got no answer from the real host.
#[derive(Debug, thiserror::Error)]
pub enum NotForwarded {
    /// The miss policy does not forward (`--on-miss fail`).
    #[error("misses are not forwarded")]
    Off,
    /// The `--budget` is used up.
    #[error(transparent)]
    Budget(#[from] BudgetExhausted),
    /// Forwarding failed.
    #[error(transparent)]
    Failed(#[from] ForwardError),
}

/// A recorded exchange as the engine keeps it: what serving and the report need, not the
/// parsed bodies, which would take most of the memory of a large snapshot.
#[derive(Debug)]
pub struct RecordedEntry {
    /// The exchange file, relative to the snapshot directory when possible.
    pub file: PathBuf,
    /// The provider it was recorded from.
    pub provider: Provider,
    /// `METHOD /path`, the report's endpoint column.
    pub endpoint: Arc<str>,
    /// The response ready to send, or why it cannot be sent.
    pub response: Result<PreparedResponse, Arc<PrepareError>>,
    /// Its tokens and cost under the built-in prices, for the report.
    pub call: Arc<CallLine>,
}

impl RecordedEntry {
    /// Prepares `exchange` (recorded in `file`) for serving; a response that cannot be
    /// prepared is logged and kept as its error.
    fn new(file: PathBuf, exchange: &Exchange, prices: &PriceTable) -> Self {
        let response = PreparedResponse::new(exchange).map_err(Arc::new);
        if let Err(e) = &response {
            tracing::warn!(file = %file.display(), error = %llmsim_snapshot::error_chain(e.as_ref()), "this recording cannot be served");
        }
        Self {
            file,
            provider: exchange.provider,
            endpoint: endpoint_label(&exchange.request.method, &exchange.request.path).into(),
            response,
            call: Arc::new(CallLine::of(exchange, prices)),
        }
    }
}

/// A request answered from the recording.
#[derive(Clone, Debug)]
pub struct Hit {
    /// The recorded exchange to serve.
    pub entry: Arc<RecordedEntry>,
    /// Whether its recordings were used up and the repeat policy chose it.
    pub repeated: bool,
}

/// The recorded request nearest to a miss.
#[derive(Clone, Debug)]
pub struct Closest {
    /// The exchange file, relative to the snapshot directory when possible.
    pub file: PathBuf,
    /// How the request differs from it.
    pub diffs: Vec<FieldDiff>,
}

/// A request that matched no recording.
#[derive(Clone, Debug)]
pub struct Miss {
    /// `METHOD host/path` as requested.
    pub request: String,
    /// The provider whose error shape the app expects.
    pub provider: Provider,
    /// The endpoint called, for the error shape when the provider is generic.
    pub endpoint: Endpoint,
    /// How many recordings with this exact signature were already served under
    /// `--repeat fail` (0: nothing matched at all).
    pub used_up: usize,
    /// The closest recorded request, if the snapshot has any.
    pub closest: Option<Closest>,
}

impl Miss {
    /// One line saying why there was no answer.
    pub fn reason(&self) -> String {
        if self.used_up > 0 {
            format!(
                "all {} recordings of this request were already served (--repeat fail)",
                self.used_up
            )
        } else {
            "no recording matches".to_owned()
        }
    }

    /// The miss as the report keeps it.
    pub fn record(&self) -> MissRecord {
        MissRecord {
            request: self.request.clone(),
            reason: self.reason(),
            closest: self.closest.as_ref().map(|c| c.file.display().to_string()),
            diffs: self
                .closest
                .iter()
                .flat_map(|c| c.diffs.iter().map(ToString::to_string))
                .collect(),
        }
    }
}

/// What [`Engine::respond`] decided.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Serve this recording.
    Hit(Hit),
    /// Nothing to serve.
    Miss(Box<Miss>),
}

/// The replay engine; share it in an `Arc` between connections.
#[derive(Debug)]
pub struct Engine {
    dir: PathBuf,
    entries: Vec<Arc<RecordedEntry>>,
    index: SignatureIndex,
    rules: CompiledRules,
    /// The signatures of requests already served, under `rules`.
    memo: SignatureMemo,
    /// Recorded hosts in order of first appearance, lowercase.
    hosts: Vec<String>,
    /// Where recorded plain-HTTP exchanges went (their connections' peers), sorted.
    plain_peers: Vec<SocketAddr>,
    options: ReplayOptions,
    stats: Arc<Stats>,
    skipped: usize,
    prices: PriceTable,
    /// Forwarding for misses (`--on-miss passthrough|record`).
    upstream: Option<Arc<Upstream>>,
    /// Exchanges recorded during this run, by signature digest and host, served to later
    /// identical requests (`--on-miss record`).
    live: Mutex<HashMap<([u8; 32], String), LiveRecordings>>,
    /// Injected faults (`[faults]`, `--fault`).
    faults: Faults,
    /// Simulated rate limits (`--rate-limit`).
    limiter: RateLimiter,
    /// The recording's latency distributions, under `--pace model`.
    latency: Option<LatencyModel>,
    /// Per provider, the rate-limit headers of its last recorded answer that had some.
    recorded_limits: HashMap<Provider, Vec<(HeaderName, HeaderValue)>>,
}

/// One servable exchange as loaded: its entry, its signature, and its connection's
/// peer when it was made over plain HTTP.
type Loaded = (Arc<RecordedEntry>, Signature, Option<SocketAddr>);

/// What loading made of one exchange file.
enum Prepared {
    /// An outbound exchange, ready to serve.
    Ready(Loaded),
    /// An incomplete exchange, skipped with a warning.
    Incomplete,
    /// A request the app served (`--app-port`): not replayd's to answer.
    Inbound,
}

/// The exchanges recorded during the run for one signature, and how many were served.
#[derive(Debug, Default)]
struct LiveRecordings {
    entries: Vec<Arc<RecordedEntry>>,
    served: usize,
}

impl Engine {
    /// Loads the snapshot in `dir` and builds the engine from it. Every exchange file is
    /// read and parsed, and the first that does not parse is the error. Incomplete
    /// exchanges are skipped with a warning; a response that cannot be prepared is logged
    /// and kept, so matching it gives a snapshot error rather than a misleading miss.
    pub fn load(dir: &Path, options: ReplayOptions) -> Result<Self, EngineError> {
        let snapshot = SnapshotDir::open(dir)?;
        let rules = snapshot
            .config
            .matching
            .compile()
            .map_err(|source| EngineError::Rules {
                path: snapshot.dir.join(llmsim_snapshot::config::CONFIG_FILE),
                source,
            })?;
        let prices = PriceTable::builtin();
        // Each exchange is signed and prepared as soon as it is parsed, on the loading
        // threads, and its parsed bodies are dropped there: holding every parsed exchange
        // first took four times the memory, and faulting that in was a large part of
        // start-up.
        let prepared: Vec<Prepared> =
            snapshot.load_each(|recorded| {
                let file = relative(&snapshot.dir, &recorded.path);
                let exchange = recorded.exchange;
                if exchange.direction == Direction::Inbound {
                    // The app's own API: what a driver sends to the app, never served here.
                    return Prepared::Inbound;
                }
                if let Some(why) = &exchange.incomplete {
                    tracing::warn!(file = %file.display(), reason = %why, "skipping an incomplete exchange");
                    return Prepared::Incomplete;
                }
                let signature = recorded_signature(&exchange, &rules);
                let plain_peer = exchange.peer.filter(|_| exchange.scheme == Scheme::Http);
                Prepared::Ready((Arc::new(RecordedEntry::new(file, &exchange, &prices)), signature, plain_peer))
            })?;
        let skipped = prepared
            .iter()
            .filter(|p| matches!(p, Prepared::Incomplete))
            .count();
        let faults = snapshot.config.faults;
        let mut entries = Vec::with_capacity(prepared.len());
        let mut signatures = Vec::with_capacity(prepared.len());
        let mut hosts: Vec<String> = Vec::new();
        let mut plain_peers: Vec<SocketAddr> = Vec::new();
        for prepared in prepared {
            let Prepared::Ready((entry, signature, plain_peer)) = prepared else {
                continue;
            };
            plain_peers.extend(plain_peer);
            let host = &signature.canonical().host;
            if !hosts.contains(host) {
                hosts.push(host.clone());
            }
            signatures.push((entries.len(), signature));
            entries.push(entry);
        }
        let latency = (options.pace == Pace::Model).then(|| latency_model(&entries, faults.seed));
        Ok(Self {
            dir: snapshot.dir,
            index: SignatureIndex::new(signatures, options.repeat),
            recorded_limits: recorded_limits(&entries),
            latency,
            faults: Faults::new(faults.seed, faults.rules),
            limiter: RateLimiter::default(),
            entries,
            rules,
            memo: SignatureMemo::default(),
            hosts,
            plain_peers: {
                plain_peers.sort_unstable();
                plain_peers.dedup();
                plain_peers
            },
            options,
            stats: Arc::new(Stats::new()),
            skipped,
            prices,
            upstream: None,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Forwards misses through `upstream` (`--on-miss passthrough|record`).
    #[must_use]
    pub fn with_upstream(mut self, upstream: Option<Arc<Upstream>>) -> Self {
        self.upstream = upstream;
        self
    }

    /// Applies the load-test settings: `--fault` rules after the snapshot's `[faults]`,
    /// `--seed`, and `--rate-limit` (`recorded` reads the recording's limit headers).
    pub fn with_load(mut self, load: LoadOptions) -> Result<Self, EngineError> {
        let seed = load.seed.unwrap_or(self.faults.seed());
        let rules: Vec<_> = self.faults.rules().cloned().chain(load.faults).collect();
        self.faults = Faults::new(seed, rules);
        if self.options.pace == Pace::Model {
            self.latency = Some(latency_model(&self.entries, seed));
        }
        self.limiter = RateLimiter::new(&load.rate_limits, |provider| {
            self.recorded_limits
                .get(&provider)
                .map(|headers| limits_of(provider, headers))
        })?;
        Ok(self)
    }

    /// Updates `metrics` along with the run's statistics.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.stats = Arc::new(Stats::with_metrics(metrics));
        self
    }

    /// What the fault rules, rate limits and metrics need to know of a request, when any
    /// of them is in use.
    pub fn facts(&self, request: &ReplayRequest) -> Option<RequestFacts> {
        let metrics = self.stats.metrics().is_some();
        if self.faults.is_empty() && self.limiter.is_empty() && !metrics {
            return None;
        }
        let endpoint = Endpoint::classify(&request.method, &request.path);
        let model = if metrics || self.faults.need_model() || endpoint.is_gemini() {
            let body: Option<serde_json::Value> = serde_json::from_slice(&request.body).ok();
            llmsim_snapshot::provider::model_of(endpoint, &request.path, body.as_ref())
        } else {
            None
        };
        Some(RequestFacts {
            provider: self.provider_of(request, endpoint),
            endpoint,
            path: request
                .path
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_owned(),
            model,
        })
    }

    /// The provider a request is for: its host's, or for a host that is not a recorded one
    /// (`--listen`'s own address), the first recorded host's whose error family the
    /// endpoint has.
    fn provider_of(&self, request: &ReplayRequest, endpoint: Endpoint) -> Provider {
        let provider = Provider::from_host(&request.host);
        if provider != Provider::Generic
            || !self.options.any_host
            || self.hosts.iter().any(|h| h == request.host_name())
        {
            return provider;
        }
        let family = ApiFamily::of(provider, endpoint);
        self.hosts
            .iter()
            .map(|h| Provider::from_host(h))
            .find(|p| ApiFamily::of(*p, endpoint) == family)
            .unwrap_or(provider)
    }

    /// Decides, before the lookup, whether a rate limit or an injected fault answers
    /// `request` (described by `facts`, from [`Self::facts`]), and counts what did.
    pub fn admit(&self, facts: Option<&RequestFacts>) -> Admission {
        let Some(facts) = facts else {
            return Admission::Serve(None);
        };
        if let Err(limited) = self.limiter.admit(facts.provider) {
            self.stats.record_for(Event::RateLimited, Some(facts));
            return Admission::Refuse(Box::new(faults::status_response(
                facts,
                429,
                &limited.states,
                &[],
                limited.retry_after,
                "rate-limit",
            )));
        }
        match self.faults.decide(facts) {
            None => Admission::Serve(None),
            Some(Injected::Stream(fault)) => Admission::Serve(Some(fault)),
            Some(Injected::Reset) => {
                self.count_fault(FaultKind::Reset, true, Some(facts));
                Admission::Reset
            }
            Some(Injected::Status { kind, retry_after }) => {
                self.count_fault(kind, true, Some(facts));
                let recorded = self
                    .recorded_limits
                    .get(&facts.provider)
                    .map_or(&[][..], Vec::as_slice);
                Admission::Refuse(Box::new(faults::status_response(
                    facts,
                    kind.status().unwrap_or(500),
                    &[],
                    recorded,
                    retry_after,
                    kind.as_str(),
                )))
            }
        }
    }

    /// Counts an injected fault; `replaced` when it answered instead of the recording.
    pub fn count_fault(&self, kind: FaultKind, replaced: bool, facts: Option<&RequestFacts>) {
        self.stats
            .record_for(Event::Fault { kind, replaced }, facts);
    }

    /// The synthesised timing of a stream served from `entry` under `--pace model`;
    /// `None` to pace it as recorded.
    pub fn schedule(&self, entry: &RecordedEntry) -> Option<Schedule> {
        let latency = self.latency.as_ref()?;
        let Ok(PreparedResponse {
            body: PreparedBody::Events { chunks, .. },
            ..
        }) = &entry.response
        else {
            return None;
        };
        latency.schedule(
            entry.provider,
            entry.call.model.as_deref()?,
            chunks,
            entry.call.usage.map(|u| u.output_tokens),
        )
    }

    /// The forwarding for misses, if the miss policy forwards.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }

    /// Forwards a miss to the real host `to`, unless the budget is used up, and counts the
    /// refusal or the failure. When the answer ends, the forward is counted and, under
    /// record, the new exchange becomes servable, before the app's body ends.
    pub async fn forward(
        self: &Arc<Self>,
        request: ReplayRequest,
        to: UpstreamAddr,
    ) -> Result<Response<ReplayBody>, NotForwarded> {
        let result = self.try_forward(request, to).await;
        match &result {
            Err(NotForwarded::Budget(exhausted)) => self.stats.record(Event::BudgetRefused {
                budget_usd: exhausted.budget_usd,
            }),
            Err(NotForwarded::Failed(_)) => self.stats.record(Event::ForwardFailed),
            Ok(_) | Err(NotForwarded::Off) => {}
        }
        result
    }

    async fn try_forward(
        self: &Arc<Self>,
        request: ReplayRequest,
        to: UpstreamAddr,
    ) -> Result<Response<ReplayBody>, NotForwarded> {
        let upstream = match &self.upstream {
            Some(upstream) if self.forwards() => upstream,
            _ => return Err(NotForwarded::Off),
        };
        upstream.admit()?;
        tracing::info!("forwarding {} to {to}", request.describe());
        let engine = self.clone();
        let done = move |forwarded| engine.forwarded(forwarded);
        Ok(upstream.forward(to, request, done).await?)
    }

    /// Counts a forward whose answer ended; under record, serves what was written to later
    /// identical requests.
    fn forwarded(&self, forwarded: Forwarded) {
        let Forwarded {
            exchange,
            call,
            recording,
        } = forwarded;
        match &recording {
            Recording::Written(path) => self.add_recorded(&exchange, path),
            Recording::Failed => self.stats.record(Event::InternalError),
            Recording::Off | Recording::Incomplete => {}
        }
        self.stats.record(Event::Forwarded {
            provider: exchange.provider,
            endpoint: endpoint_label(&exchange.request.method, &exchange.request.path),
            // A write that failed is counted as an internal error, not as recorded.
            recorded: matches!(recording, Recording::Written(_)),
            call: Box::new(call),
        });
    }

    /// Counts a request refused before any lookup: its body could not be read.
    pub fn count_bad_request(&self) {
        self.stats.record(Event::BadRequest);
    }

    /// Counts an answer replayd failed to build through its own fault.
    pub fn count_internal_error(&self) {
        self.stats.record(Event::InternalError);
    }

    /// Counts a TLS client that refused the replay CA.
    pub fn count_rejected_ca(&self, rejected: RejectedCa) {
        self.stats.record(Event::RejectedCa(rejected));
    }

    /// Makes an exchange recorded during the run (stored at `path`) servable to later
    /// requests with its signature, as if it had been in the snapshot at start-up.
    fn add_recorded(&self, exchange: &Exchange, path: &Path) {
        let signature = recorded_signature(exchange, &self.rules);
        let entry = Arc::new(RecordedEntry::new(
            relative(&self.dir, path),
            exchange,
            &self.prices,
        ));
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((*signature.digest(), signature.host().to_owned()))
            .or_default()
            .entries
            .push(entry);
    }

    /// The next exchange recorded during the run for `signature`'s request addressed to
    /// `host`, under the repeat policy.
    fn live_next(&self, signature: &Signature, host: &str) -> Option<Hit> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.is_empty() {
            return None;
        }
        let recordings = live.get_mut(&(*signature.digest(), host.to_owned()))?;
        let count = recordings.entries.len();
        let n = recordings.served;
        recordings.served += 1;
        let (entry, repeated) = if n < count {
            (recordings.entries.get(n)?, false)
        } else {
            let entry = match self.options.repeat {
                signature::Repeat::Last => recordings.entries.last(),
                signature::Repeat::Cycle => recordings.entries.get(n % count),
                signature::Repeat::Fail => None,
            }?;
            (entry, true)
        };
        Some(Hit {
            entry: entry.clone(),
            repeated,
        })
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &ReplayOptions {
        &self.options
    }

    /// The run's statistics, to read (and for served bodies to add their serve time).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The recorded hosts (lowercase, no port), in order of first appearance: with the
    /// known provider hosts, what DNS answers and the redirect hooks cover
    /// ([`crate::redirect::answered_hosts`]).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The peers of recorded plain-HTTP exchanges (a local model server's
    /// `127.0.0.1:11434`), which the redirect sends to replayd
    /// ([`crate::redirect::plain_destinations`]).
    pub fn plain_peers(&self) -> &[SocketAddr] {
        &self.plain_peers
    }

    /// How many exchanges can be served.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is nothing to serve.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many incomplete exchanges were skipped.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The signature of `request` under the snapshot's rules. A body in a
    /// `Content-Encoding` is decoded first, as capture stored the recorded ones; any other is
    /// signed once and remembered, as load tests send the same requests again and again.
    pub fn signature(&self, request: &ReplayRequest) -> Signature {
        let headers = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()));
        let coding = request
            .headers
            .get(http::header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        let Some(coding) = coding else {
            return self.memo.sign(
                &request.method,
                request.host_name(),
                &request.path,
                headers,
                &request.body,
                &self.rules,
            );
        };
        let content_type = request
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let decoded = model::Body::from_http(content_type, Some(&coding), &[(0.0, &request.body)])
            .unwrap_or_else(|_| model::Body::raw(Some(&coding), request.body.to_vec()));
        let mut bytes = Vec::new();
        Signature::with_headers(
            &request.method,
            request.host_name(),
            &request.path,
            headers,
            signature_body(&decoded, &mut bytes),
            &self.rules,
        )
    }

    /// Decides what `request` gets and counts it in the statistics.
    pub fn respond(&self, request: &ReplayRequest) -> Outcome {
        self.respond_for(request, None)
    }

    /// [`Self::respond`] for a request described by `facts` ([`Self::facts`]): the
    /// metrics' labels, and a served answer's tokens charged to its rate limit.
    pub fn respond_for(&self, request: &ReplayRequest, facts: Option<&RequestFacts>) -> Outcome {
        let outcome = self.lookup(request);
        if let Outcome::Hit(hit) = &outcome
            && let Some(usage) = &hit.entry.call.usage
        {
            self.limiter
                .charge_tokens(hit.entry.provider, usage.total());
        }
        let event = match &outcome {
            Outcome::Hit(hit) if hit.entry.response.is_err() => Event::SnapshotError,
            Outcome::Hit(hit) => {
                let served = ServedCall {
                    provider: hit.entry.provider,
                    endpoint: &hit.entry.endpoint,
                    repeated: hit.repeated,
                    call: &hit.entry.call,
                };
                self.stats.served(served, facts);
                return outcome;
            }
            // A forwarded miss is counted when the forward ends.
            Outcome::Miss(_) if self.forwards() => return outcome,
            Outcome::Miss(miss) => Event::Miss(miss.record()),
        };
        self.stats.record_for(event, facts);
        outcome
    }

    /// Whether misses go to the real host.
    pub fn forwards(&self) -> bool {
        self.upstream.is_some() && self.options.on_miss != OnMiss::Fail
    }

    /// Like [`Self::respond`] without counting: for `explain`, and for tests. The request
    /// is signed once, whatever the number of hosts it is looked up on.
    pub fn lookup(&self, request: &ReplayRequest) -> Outcome {
        let signature = self.signature(request);
        let hosts = self.candidate_hosts(&signature);
        for host in hosts {
            if let Some(served) = self.index.next_at(&signature, host) {
                return Outcome::Hit(self.hit(served));
            }
        }
        for host in hosts {
            if let Some(hit) = self.live_next(&signature, host) {
                return Outcome::Hit(hit);
            }
        }
        let used_up = hosts
            .iter()
            .map(|host| self.index.recorded_count_at(&signature, host))
            .max()
            .unwrap_or(0);
        let nearest = hosts
            .iter()
            .filter_map(|host| {
                if *host == signature.host() {
                    return self.index.closest(signature.canonical());
                }
                // Only a miss compares the request, addressed to each recorded host.
                self.index.closest(&CanonicalRequest {
                    host: host.clone(),
                    ..signature.canonical().clone()
                })
            })
            .min_by_key(|(exchange, diffs)| (diffs.len(), *exchange))
            .and_then(|(exchange, diffs)| Some((self.entries.get(exchange)?, diffs)));
        let endpoint = Endpoint::classify(&request.method, &request.path);
        // Through the listener's own address, the provider is the recording's.
        let provider = match (Provider::from_host(&request.host), &nearest) {
            (Provider::Generic, Some((entry, _))) if hosts.len() > 1 || self.options.any_host => {
                entry.provider
            }
            (provider, _) => provider,
        };
        let closest = nearest.map(|(entry, diffs)| Closest {
            file: entry.file.clone(),
            diffs,
        });
        Outcome::Miss(Box::new(Miss {
            request: request.describe(),
            provider,
            endpoint,
            used_up,
            closest,
        }))
    }

    /// The hosts to look the request of `signature` up on: its own, or, when `any_host`
    /// is on and its host is not a recorded one, each recorded host.
    fn candidate_hosts<'a>(&'a self, signature: &'a Signature) -> &'a [String] {
        let host = &signature.canonical().host;
        if !self.options.any_host || self.hosts.contains(host) {
            return std::slice::from_ref(host);
        }
        &self.hosts
    }

    fn hit(&self, served: Served) -> Hit {
        Hit {
            entry: self.entries[served.exchange].clone(),
            repeated: served.repeated,
        }
    }
}

/// The signature of a recorded request.
pub fn recorded_signature(exchange: &Exchange, rules: &CompiledRules) -> Signature {
    let request = &exchange.request;
    let mut bytes = Vec::new();
    Signature::with_headers(
        &request.method,
        Authority::parse(&exchange.host).host,
        &request.path,
        request.headers.iter().map(|(n, v)| (n, v.as_bytes())),
        signature_body(&request.body, &mut bytes),
        rules,
    )
}

/// The signature view of a stored body: JSON as its value, anything else as its bytes.
fn signature_body<'a>(body: &'a model::Body, bytes: &'a mut Vec<u8>) -> signature::Body<'a> {
    match body {
        model::Body::Empty { .. } => signature::Body::Empty,
        model::Body::Json { json, .. } => signature::Body::Json(json),
        other => {
            *bytes = other.to_bytes();
            signature::Body::Bytes(bytes)
        }
    }
}

/// The latency model fitted to the recorded streams of `entries`.
fn latency_model(entries: &[Arc<RecordedEntry>], seed: u64) -> LatencyModel {
    let mut model = LatencyModel::new(seed);
    for entry in entries {
        if let (
            Ok(PreparedResponse {
                body: PreparedBody::Events { chunks, .. },
                ..
            }),
            Some(name),
        ) = (&entry.response, &entry.call.model)
            && entry.call.succeeded()
        {
            model.add(
                entry.provider,
                name,
                chunks,
                entry.call.usage.map(|u| u.output_tokens),
            );
        }
    }
    model
}

/// Per provider, the rate-limit headers of the last recorded answer that had some.
fn recorded_limits(
    entries: &[Arc<RecordedEntry>],
) -> HashMap<Provider, Vec<(HeaderName, HeaderValue)>> {
    let mut limits = HashMap::new();
    for entry in entries {
        let Ok(prepared) = &entry.response else {
            continue;
        };
        let headers: Vec<(HeaderName, HeaderValue)> = prepared
            .headers
            .iter()
            .filter(|(name, _)| faults::is_rate_limit_header(name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        if !headers.is_empty() {
            limits.insert(entry.provider, headers);
        }
    }
    limits
}

/// The requests and tokens per minute stated by a provider's recorded limit headers.
fn limits_of(provider: Provider, headers: &[(HeaderName, HeaderValue)]) -> Limits {
    let family = ApiFamily::of(provider, Endpoint::Other);
    let limit = |kind| {
        let [name, ..] = family.limit_header_names(kind)?;
        headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok()?.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
    };
    Limits {
        requests: limit(LimitKind::Requests),
        tokens: limit(LimitKind::Tokens),
    }
}

/// `METHOD /path` without the query string.
pub fn endpoint_label(method: &str, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    format!("{} {path}", method.to_ascii_uppercase())
}

fn relative(dir: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(dir).unwrap_or(path).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use llmsim_snapshot::signature::Repeat;

    use crate::response::PreparedBody;
    use serde_json::json;

    use crate::testutil::{chat, exchange, snapshot};

    fn request(prompt: &str) -> ReplayRequest {
        ReplayRequest {
            method: "POST".into(),
            host: "api.openai.com".into(),
            path: "/v1/chat/completions".into(),
            headers: HeaderMap::new(),
            body: Bytes::from(chat(prompt).to_string()),
        }
    }

    fn engine(exchanges: &[Exchange], options: ReplayOptions) -> Engine {
        let dir = snapshot(exchanges);
        Engine::load(dir.path(), options).unwrap()
    }

    fn served_answer(outcome: &Outcome) -> (serde_json::Value, bool) {
        match outcome {
            Outcome::Hit(hit) => {
                let Ok(PreparedResponse {
                    body: PreparedBody::Full(bytes),
                    ..
                }) = &hit.entry.response
                else {
                    panic!("not a whole JSON answer: {:?}", hit.entry.response);
                };
                (serde_json::from_slice(bytes).unwrap(), hit.repeated)
            }
            Outcome::Miss(miss) => panic!("unexpected miss: {miss:?}"),
        }
    }

    #[test]
    fn hits_in_recorded_order_then_repeat() {
        let recorded = [
            exchange("a", json!({"n": 1})),
            exchange("b", json!({"n": 2})),
            exchange("a", json!({"n": 3})),
        ];
        for (repeat, third) in [
            (Repeat::Last, Some(json!({"n": 3}))),
            (Repeat::Cycle, Some(json!({"n": 1}))),
            (Repeat::Fail, None),
        ] {
            let engine = engine(
                &recorded,
                ReplayOptions {
                    repeat,
                    ..ReplayOptions::default()
                },
            );
            assert_eq!(
                served_answer(&engine.respond(&request("a"))),
                (json!({"n": 1}), false)
            );
            assert_eq!(
                served_answer(&engine.respond(&request("a"))),
                (json!({"n": 3}), false)
            );
            let again = engine.respond(&request("a"));
            match (third, &again) {
                (Some(want), _) => assert_eq!(served_answer(&again), (want, true)),
                (None, Outcome::Miss(miss)) => {
                    assert_eq!(miss.used_up, 2);
                    assert!(
                        miss.reason().contains("already served"),
                        "{}",
                        miss.reason()
                    );
                }
                (None, Outcome::Hit(_)) => panic!("--repeat fail served a third answer"),
            }
            let report = engine.stats().report();
            assert_eq!(
                report.total_served,
                if repeat == Repeat::Fail { 2 } else { 3 }
            );
            assert_eq!(report.repeats, u64::from(repeat != Repeat::Fail));
        }
    }

    #[test]
    fn a_miss_names_the_closest_file_and_field() {
        let engine = engine(
            &[exchange("What is the capital of France?", json!({}))],
            ReplayOptions::default(),
        );
        let Outcome::Miss(miss) = engine.respond(&request("What is the capital of Italy?")) else {
            panic!("expected a miss");
        };
        let closest = miss.closest.as_ref().unwrap();
        assert_eq!(
            closest.file,
            Path::new("exchanges/000001-openai-post-v1-chat-completions.json")
        );
        assert_eq!(closest.diffs.len(), 1);
        assert_eq!(closest.diffs[0].pointer, "/messages/0/content");
        assert_eq!(miss.provider, Provider::OpenAi);
        assert_eq!(miss.request, "POST api.openai.com/v1/chat/completions");
        let report = engine.stats().report();
        assert_eq!(report.misses.len(), 1);
        assert!(report.failed());
    }

    #[test]
    fn volatile_fields_and_key_order_do_not_matter() {
        let engine = engine(
            &[exchange("hi", json!({"ok": 1}))],
            ReplayOptions::default(),
        );
        let mut req = request("hi");
        req.body = Bytes::from_static(
            br#"{"messages":[{"content":"hi","role":"user"}],"user":"u-42","model":"gpt-4o-mini","stream_options":null}"#,
        );
        req.host = "API.OpenAI.com:443".into();
        assert!(matches!(engine.respond(&req), Outcome::Hit(_)));
    }

    #[test]
    fn any_host_matches_the_listener_address() {
        let recorded = [exchange("hi", json!({"ok": 1}))];
        let mut req = request("hi");
        req.host = "127.0.0.1:8080".into();
        let strict = engine(&recorded, ReplayOptions::default());
        let Outcome::Miss(miss) = strict.respond(&req) else {
            panic!("an unrecorded host must miss without any_host");
        };
        assert_eq!(miss.closest.unwrap().diffs[0].pointer, "host");
        let listen = engine(&recorded, ReplayOptions::listen());
        assert!(matches!(listen.respond(&req), Outcome::Hit(_)));
        // A miss through the listener address still shows the body difference, not the host.
        let Outcome::Miss(miss) = listen.respond(&ReplayRequest {
            host: "localhost".into(),
            ..request("bye")
        }) else {
            panic!("expected a miss");
        };
        assert_eq!(miss.provider, Provider::OpenAi);
        assert_eq!(
            miss.closest.unwrap().diffs[0].pointer,
            "/messages/0/content"
        );
    }

    #[test]
    fn gzip_request_bodies_are_decoded() {
        let engine = engine(
            &[exchange("hi", json!({"ok": 1}))],
            ReplayOptions::default(),
        );
        let gz = flate2_gzip(&chat("hi").to_string());
        let mut req = request("hi");
        req.headers
            .insert("content-encoding", "gzip".parse().unwrap());
        req.headers
            .insert("content-type", "application/json".parse().unwrap());
        req.body = Bytes::from(gz);
        assert!(matches!(engine.respond(&req), Outcome::Hit(_)));
        // Garbage that claims gzip is signed as raw bytes: a miss, not a panic.
        req.body = Bytes::from_static(b"\x1f\x8b not really");
        assert!(matches!(engine.respond(&req), Outcome::Miss(_)));
    }

    fn flate2_gzip(text: &str) -> Vec<u8> {
        // The snapshot crate decodes gzip; build a stored-block gzip member by hand so the
        // test needs no compression crate: header, raw deflate "stored" block, crc, size.
        let data = text.as_bytes();
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.push(1);
        let len = u16::try_from(data.len()).unwrap();
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn incomplete_exchanges_are_skipped_and_broken_ones_kept() {
        let mut cut = exchange("cut", json!({}));
        cut.incomplete = Some("connection closed".into());
        let mut broken = exchange("broken", json!({}));
        broken.response.headers = [("bad name", "x")].into_iter().collect();
        let engine = engine(&[cut, broken], ReplayOptions::default());
        assert_eq!((engine.len(), engine.skipped()), (1, 1));
        assert!(matches!(engine.respond(&request("cut")), Outcome::Miss(_)));
        let Outcome::Hit(hit) = engine.respond(&request("broken")) else {
            panic!("a broken recording still matches");
        };
        assert!(hit.entry.response.is_err());
        assert_eq!(engine.stats().report().snapshot_errors, 1);
    }

    #[test]
    fn inbound_exchanges_are_neither_served_nor_skipped() {
        let mut inbound = exchange("app", json!({}));
        inbound.direction = Direction::Inbound;
        let engine = engine(
            &[inbound, exchange("llm", json!({}))],
            ReplayOptions::default(),
        );
        assert_eq!((engine.len(), engine.skipped()), (1, 0));
        assert!(matches!(engine.respond(&request("app")), Outcome::Miss(_)));
        assert!(matches!(engine.respond(&request("llm")), Outcome::Hit(_)));
    }

    #[test]
    fn hosts_and_labels() {
        for (host, name) in [
            ("api.openai.com:443", "api.openai.com"),
            ("[::1]:8080", "::1"),
            ("::1", "::1"),
            ("localhost", "localhost"),
        ] {
            let request = ReplayRequest {
                host: host.into(),
                ..ReplayRequest::default()
            };
            assert_eq!(request.host_name(), name);
        }
        assert_eq!(endpoint_label("post", "/v1/x?y=1"), "POST /v1/x");
        let engine = engine(&[exchange("hi", json!({}))], ReplayOptions::default());
        assert_eq!(engine.hosts(), ["api.openai.com"]);
    }

    #[test]
    fn recorded_rate_limits_refuse_with_the_providers_429_and_keep_the_recording() {
        let mut limited = exchange("hi", json!({"answer": "hello"}));
        limited.response.headers = [
            ("content-type", "application/json"),
            ("x-ratelimit-limit-requests", "2"),
            ("x-ratelimit-remaining-requests", "1"),
        ]
        .into_iter()
        .collect();
        let limited = engine(&[limited], ReplayOptions::listen())
            .with_load(LoadOptions {
                rate_limits: vec!["openai=recorded".parse().unwrap()],
                ..LoadOptions::default()
            })
            .unwrap();
        // Through --listen the host is the listener's: the provider is the recorded one's.
        let mut asked = request("hi");
        asked.host = "127.0.0.1:8080".into();
        let facts = limited.facts(&asked).unwrap();
        assert_eq!(facts.provider, Provider::OpenAi);
        for _ in 0..2 {
            assert!(matches!(
                limited.admit(Some(&facts)),
                Admission::Serve(None)
            ));
        }
        let Admission::Refuse(refused) = limited.admit(Some(&facts)) else {
            panic!("the third request in a minute is refused");
        };
        assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");
        assert_eq!(limited.stats().report().rate_limited, 1);
        // The refusal did not use the recording up.
        assert!(matches!(limited.respond(&asked), Outcome::Hit(ref hit) if !hit.repeated));
        let gemini =
            engine(&[exchange("hi", json!({}))], ReplayOptions::default()).with_load(LoadOptions {
                rate_limits: vec!["gemini=recorded".parse().unwrap()],
                ..LoadOptions::default()
            });
        assert!(matches!(gemini, Err(EngineError::RateLimit(_))));
    }
}
