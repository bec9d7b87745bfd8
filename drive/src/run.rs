//! Running the plan: `--concurrency` workers, each with its own connection, take the
//! requests in turn (request `k % n` of the plan, copy `k / n`). In a closed loop a worker
//! sends its next request as soon as the last is answered and latency runs from the
//! send; with `--rate` (open loop) request `k` is scheduled at `k / rate` seconds after
//! the start and its latency runs from that instant, so a slow app is charged for the
//! requests that waited (as wrk2 and oha measure). `--duration` cycles the plan until
//! it is over. The workers of each thread tally their outcomes together (and update the
//! metrics from the same events); the progress line and the [`Summary`] merge the
//! threads' tallies.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Uri, header};
use http_body_util::Full;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{Connection, Connector, TlsSetupError};
use crate::compare::{CompareError, Comparer};
use crate::metrics::DriveMetrics;
use crate::options::DriveOptions;
use crate::plan::{Plan, PlanError, Planned, Target, TargetError};
use crate::summary::{Latency, LlmCalls, ResponseDiff, SHOWN_DIFFERENCES, Summary};

/// Why a run cannot start: bad input.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The snapshot cannot be driven.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The target URL is not one.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The `[compare]` rules are not usable.
    #[error(transparent)]
    Compare(#[from] CompareError),
    /// https cannot be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// How often the progress line is redrawn on a terminal, and printed otherwise.
const PROGRESS_TTY: Duration = Duration::from_millis(250);
const PROGRESS_LOG: Duration = Duration::from_secs(5);

/// A loaded plan and where to send it.
pub struct Driver {
    plan: Arc<Plan>,
    uris: Vec<Uri>,
    comparer: Arc<Comparer>,
    connector: Connector,
    options: DriveOptions,
    /// Kept only when they are served ([`Self::with_metrics`]): updating them is the one
    /// thing every request of every thread would otherwise write to in common.
    metrics: Option<Arc<DriveMetrics>>,
}

/// The outcomes of one thread's workers. They take turns on the thread and hold the lock
/// only between two awaits, so only the progress line ever waits for it.
#[derive(Debug)]
struct Tally {
    /// Answered requests' latencies, in microseconds.
    latency: Histogram<u64>,
    ok: u64,
    differing: u64,
    errors: BTreeMap<&'static str, u64>,
    statuses: BTreeMap<u16, u64>,
    linked: u64,
    differences: Vec<ResponseDiff>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: Histogram::new(3).expect("3 significant figures are valid"),
            ok: 0,
            differing: 0,
            errors: BTreeMap::new(),
            statuses: BTreeMap::new(),
            linked: 0,
            differences: Vec::new(),
        }
    }

    fn requests(&self) -> u64 {
        self.ok + self.differing + self.errors.values().sum::<u64>()
    }

    fn merge(&mut self, other: &Self) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.differing += other.differing;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.linked += other.linked;
        self.differences.extend(other.differences.iter().cloned());
    }
}

type Tallies = Arc<Vec<Mutex<Tally>>>;

fn merged(tallies: &Tallies) -> Tally {
    let mut all = Tally::new();
    for tally in tallies.iter() {
        all.merge(&tally.lock().unwrap_or_else(PoisonError::into_inner));
    }
    all
}

fn ms(micros: u64) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "latencies are far below 2^52 µs"
    )]
    let micros = micros as f64;
    micros / 1000.0
}

impl Driver {
    /// Loads the inbound exchanges of the snapshot in `dir` for `target`.
    pub fn new(dir: &Path, target: &str, options: DriveOptions) -> Result<Self, DriveError> {
        let target = Arc::new(Target::parse(target)?);
        let plan = Plan::load(dir, &options.unique)?;
        let comparer = Comparer::new(plan.compare.clone())?;
        // The recorded paths were checked when the plan was loaded and the prefix comes
        // from a parsed URL, so each concatenation is a valid URI.
        let uris = plan
            .requests
            .iter()
            .map(|planned| {
                format!("{}{}", target.prefix, planned.path)
                    .parse()
                    .unwrap_or_default()
            })
            .collect();
        Ok(Self {
            plan: Arc::new(plan),
            uris,
            comparer: Arc::new(comparer),
            connector: Connector::new(target)?,
            options,
            metrics: None,
        })
    }

    /// Keeps the run's metrics, to be served ([`Self::metrics`]).
    #[must_use]
    pub fn with_metrics(mut self) -> Self {
        self.metrics = Some(Arc::new(DriveMetrics::new()));
        self
    }

    /// The run's metrics, when kept.
    pub fn metrics(&self) -> Option<&Arc<DriveMetrics>> {
        self.metrics.as_ref()
    }

    /// The target.
    pub fn target(&self) -> &Target {
        self.connector.target()
    }

    /// The options.
    pub fn options(&self) -> &DriveOptions {
        &self.options
    }

    /// Sends the plan as the options say, with the progress line on stderr, and sums up.
    /// The LLM calls are the ones the recording links to the requests sent. The caller's
    /// runtime only draws the progress line ([`Self::start_threads`] runs the workers).
    /// Fails only when the threads cannot be started.
    pub async fn run(&self) -> std::io::Result<Summary> {
        let connections = self.options.connections() as usize;
        let threads = thread::available_parallelism()
            .map_or(1, usize::from)
            .min(connections)
            .max(1);
        let tallies: Tallies = Arc::new((0..threads).map(|_| Mutex::new(Tally::new())).collect());
        let shared = Arc::new(Shared {
            plan: self.plan.clone(),
            target: self.connector.target().clone(),
            uris: self.uris.clone(),
            comparer: self.comparer.clone(),
            options: self.options.clone(),
            metrics: self.metrics.clone(),
            next: AtomicU64::new(0),
            shown: AtomicUsize::new(0),
            start: Instant::now(),
        });
        // Each thread holds a sender until its workers are done, however they end: the
        // channel closes once every thread's are.
        let (done, mut all_done) = mpsc::channel::<()>(1);
        let handles = self.start_threads(&shared, &tallies, connections, &done)?;
        drop(done);
        let tty = std::io::stderr().is_terminal();
        let mut ticks = tokio::time::interval_at(
            shared.start + if tty { PROGRESS_TTY } else { PROGRESS_LOG },
            if tty { PROGRESS_TTY } else { PROGRESS_LOG },
        );
        loop {
            tokio::select! {
                None = all_done.recv() => break,
                _ = ticks.tick() => {
                    let line = progress_line(&merged(&tallies), shared.start.elapsed());
                    let mut stderr = std::io::stderr().lock();
                    let _ = if tty {
                        write!(stderr, "\r\x1b[2K{line}")
                    } else {
                        writeln!(stderr, "{line}")
                    };
                    let _ = stderr.flush();
                }
            }
        }
        let elapsed = shared.start.elapsed();
        for handle in handles {
            // Every thread has ended but for dropping its runtime.
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        if tty {
            eprint!("\r\x1b[2K");
        }
        Ok(self.summary(&merged(&tallies), elapsed))
    }

    /// Starts one thread per tally (one per core, at most one per connection), sharing
    /// the connections out among them. Each runs its connections' workers on a
    /// single-threaded runtime of its own, as oha does: a worker's exchanges never wait
    /// on another thread's wake-up nor move between cores, as they did with the
    /// multi-threaded runtime's work stealing. A worker's panic ends its thread, whose
    /// handle gives it back.
    fn start_threads(
        &self,
        shared: &Arc<Shared>,
        tallies: &Tallies,
        connections: usize,
        done: &mpsc::Sender<()>,
    ) -> std::io::Result<Vec<thread::JoinHandle<()>>> {
        let threads = tallies.len();
        (0..threads)
            .map(|first| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let (shared, tallies, connector, done) = (
                    shared.clone(),
                    tallies.clone(),
                    self.connector.clone(),
                    done.clone(),
                );
                thread::Builder::new()
                    .name(format!("drive-{first}"))
                    .spawn(move || {
                        let _done = done;
                        runtime.block_on(async {
                            let mut workers = tokio::task::JoinSet::new();
                            for _ in (first..connections).step_by(threads) {
                                let (shared, tallies) = (shared.clone(), tallies.clone());
                                let connection = Connection::new(connector.clone());
                                workers.spawn(async move {
                                    shared.work(connection, &tallies[first]).await;
                                });
                            }
                            while let Some(ended) = workers.join_next().await {
                                if let Err(e) = ended
                                    && e.is_panic()
                                {
                                    std::panic::resume_unwind(e.into_panic());
                                }
                            }
                        });
                    })
            })
            .collect()
    }

    fn summary(&self, tally: &Tally, elapsed: Duration) -> Summary {
        let requests = tally.requests();
        let seconds = elapsed.as_secs_f64();
        #[expect(
            clippy::cast_precision_loss,
            reason = "request counts are far below 2^52"
        )]
        let throughput_rps = if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        };
        let h = &tally.latency;
        let latency_ms = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: ms(h.value_at_quantile(0.5)),
                p90: ms(h.value_at_quantile(0.9)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
            }
        };
        let mut differences = tally.differences.clone();
        differences.sort_by_key(|d| (d.copy, d.seq));
        Summary {
            mode: if self.options.rate.is_some() {
                "open-loop"
            } else if self.options.is_load() {
                "closed-loop"
            } else {
                "regression"
            },
            concurrency: self.options.connections(),
            rate: self.options.rate.map(crate::options::Rate::per_second),
            requests,
            ok: tally.ok,
            differing: tally.differing,
            errors: tally.errors.clone(),
            statuses: tally.statuses.clone(),
            elapsed_s: seconds,
            throughput_rps,
            latency_ms,
            llm_calls: LlmCalls {
                count: tally.linked,
                source: "recording",
            },
            differences,
        }
    }
}

fn progress_line(tally: &Tally, elapsed: Duration) -> String {
    let requests = tally.requests();
    #[expect(
        clippy::cast_precision_loss,
        reason = "request counts are far below 2^52"
    )]
    let rate = requests as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    let (p50, p99) = if tally.latency.is_empty() {
        (0.0, 0.0)
    } else {
        (
            ms(tally.latency.value_at_quantile(0.5)),
            ms(tally.latency.value_at_quantile(0.99)),
        )
    };
    format!(
        "drive: {requests} requests, {rate:.1} req/s, {} differing, {} errors, p50 {p50:.2} ms, p99 {p99:.2} ms",
        tally.differing,
        tally.errors.values().sum::<u64>()
    )
}

/// What every worker reads.
struct Shared {
    plan: Arc<Plan>,
    target: Arc<Target>,
    /// Each planned request's URI under the target's prefix.
    uris: Vec<Uri>,
    comparer: Arc<Comparer>,
    options: DriveOptions,
    metrics: Option<Arc<DriveMetrics>>,
    /// The next request's index `k`.
    next: AtomicU64,
    /// Differing answers kept for the summary so far.
    shown: AtomicUsize,
    start: Instant,
}

impl Shared {
    async fn work(&self, mut connection: Connection, tally: &Mutex<Tally>) {
        let n = self.plan.requests.len() as u64;
        let total = if self.options.duration.is_some() {
            u64::MAX
        } else {
            n.saturating_mul(self.options.multiply)
        };
        let deadline = self.options.duration.map(|d| self.start + d);
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            if k >= total {
                return;
            }
            let scheduled = match self.options.rate {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "request indexes are far below 2^52"
                )]
                Some(rate) => self.start + Duration::from_secs_f64(k as f64 / rate.per_second()),
                None => Instant::now(),
            };
            if deadline.is_some_and(|deadline| scheduled >= deadline) {
                return;
            }
            // tokio's timer wakes on whole milliseconds: a request due now must not wait
            // for the next tick.
            if scheduled > Instant::now() {
                tokio::time::sleep_until(scheduled).await;
            }
            let index = usize::try_from(k % n).unwrap_or_default();
            let planned = &self.plan.requests[index];
            let copy = k / n;
            if let Some(metrics) = &self.metrics {
                metrics.started();
            }
            let result = connection
                .send(
                    self.request(planned, &self.uris[index], copy),
                    self.options.timeout,
                )
                .await;
            let latency = scheduled.elapsed();
            let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
            tally.linked += planned.linked;
            let outcome = match result {
                Ok(answer) => {
                    let _ = tally.latency.record(
                        u64::try_from(latency.as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    );
                    *tally.statuses.entry(answer.status).or_default() += 1;
                    // A --unique copy's answer legitimately differs from the recorded one.
                    let compared = copy == 0 || self.options.unique.is_empty();
                    let differences = if compared {
                        self.comparer.compare(
                            &planned.expected,
                            answer.status,
                            &answer.headers,
                            &answer.body,
                        )
                    } else {
                        Vec::new()
                    };
                    if differences.is_empty() {
                        tally.ok += 1;
                        "ok"
                    } else {
                        tally.differing += 1;
                        if self.shown.fetch_add(1, Ordering::Relaxed) < SHOWN_DIFFERENCES {
                            tally.differences.push(ResponseDiff {
                                seq: planned.seq,
                                copy,
                                method: planned.method.to_string(),
                                path: planned.path.clone(),
                                differences: differences.iter().map(ToString::to_string).collect(),
                            });
                        }
                        "difference"
                    }
                }
                Err(e) => {
                    *tally.errors.entry(e.kind()).or_default() += 1;
                    e.kind()
                }
            };
            let answered = matches!(outcome, "ok" | "difference");
            if let Some(metrics) = &self.metrics {
                metrics.finished(outcome, answered.then_some(latency));
            }
        }
    }

    fn request(&self, planned: &Planned, uri: &Uri, copy: u64) -> Request<Full<Bytes>> {
        let mut request =
            Request::new(Full::new(planned.body_for_copy(copy, &self.options.unique)));
        *request.method_mut() = planned.method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = planned.headers.clone();
        request
            .headers_mut()
            .insert(header::HOST, self.target.authority.clone());
        request
    }
}
