//! Seeing machine stalls during a timing test. A test that holds events to a 2 ms tolerance
//! cannot tell late pacing from a machine that did not run it by the arrival times alone, and
//! a machine fails to run a test in two ways: a virtual machine is sometimes not run at all
//! for a few milliseconds, and on a machine with few cores other processes keep the test's
//! threads waiting for a CPU. A watch thread sleeps in 1 ms steps on the monotonic clock and
//! records a stall for every step that overran by more than 1 ms (so every pause of 2 ms or
//! more, wherever it falls in a step) and for every step in which a thread that the timed
//! work runs on waited more than 0.5 ms for a CPU (the kernel's per-thread run delay, from
//! `/proc/self/task/*/schedstat`). The timing test may then excuse an event that a recorded
//! stall held up, and reports the stall rather than hiding it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the watch thread sleeps per step.
const STEP: Duration = Duration::from_millis(1);
/// How much longer than `STEP` a step may take before it is recorded as a stall.
const OVERRUN: Duration = Duration::from_millis(1);
/// How long a thread may wait for a CPU within one step before the step is recorded as a stall.
const CPU_WAIT: Duration = Duration::from_micros(500);

/// A time in which the machine held up the test process, somewhere between `start` and `end`.
#[derive(Debug, Clone)]
pub struct Stall {
    /// When the watch step that saw it began, or as much earlier as the longest wait for a
    /// CPU counted in that step.
    pub start: Instant,
    /// When that step ended.
    pub end: Instant,
    /// What held the process up: the watch's own step overran, or threads waited for a CPU.
    pub cause: String,
}

impl Stall {
    /// Whether the stall overlaps the interval from `from` to `to`.
    pub fn overlaps(&self, from: Instant, to: Instant) -> bool {
        self.start < to && from < self.end
    }

    /// Describes the stall with its times counted from `origin`.
    pub fn since(&self, origin: Instant) -> Relative<'_> {
        Relative {
            stall: self,
            origin,
        }
    }
}

/// A stall described with its times counted from `origin`, for a test's report.
pub struct Relative<'a> {
    stall: &'a Stall,
    origin: Instant,
}

impl fmt::Display for Relative<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a stall from {:.3} ms to {:.3} ms ({})",
            ms_between(self.origin, self.stall.start),
            ms_between(self.origin, self.stall.end),
            self.stall.cause,
        )
    }
}

/// Milliseconds from `from` to `to`, negative if `to` is earlier.
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(after) => after.as_secs_f64() * 1e3,
        None => -(from - to).as_secs_f64() * 1e3,
    }
}

/// The watch thread; dropping it without `stop` stops it too.
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Stall>>>,
}

impl StallWatch {
    /// Starts the watch thread and returns once its first step has begun. The threads whose
    /// waits for a CPU count are the calling one and those, started before or after, whose
    /// names begin with one of `named`.
    pub fn start(named: &'static [&'static str]) -> Self {
        let caller = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()));
        let stop = Arc::new(AtomicBool::new(false));
        let (running, started) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("stall-watch".to_owned())
            .spawn({
                let stop = stop.clone();
                move || {
                    let threads = Threads {
                        caller,
                        named,
                        known: HashMap::new(),
                    };
                    watch(&stop, &running, threads)
                }
            })
            .expect("cannot start the stall watch thread");
        started
            .recv()
            .expect("the stall watch thread ended at once");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the watch and returns the stalls it recorded, in order.
    pub fn stop(mut self) -> Vec<Stall> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("a watch is stopped once");
        thread.join().expect("the stall watch thread panicked")
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic on the watch thread is of no interest once the test has failed.
            let _ = thread.join();
        }
    }
}

/// The watch thread's loop: one step per `STEP` until `stop`.
fn watch(stop: &AtomicBool, running: &mpsc::Sender<()>, mut threads: Threads) -> Vec<Stall> {
    let mut stalls = Vec::new();
    let mut start = Instant::now();
    let mut waited = threads.run_delays();
    running
        .send(())
        .expect("the test waits for the watch to start");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STEP);
        let now_waited = threads.run_delays();
        let end = Instant::now();
        let took = end - start;
        let mut causes = Vec::new();
        let mut longest_wait = Duration::ZERO;
        if took > STEP + OVERRUN {
            causes.push(format!(
                "a {:.0} ms step of the watch took {:.3} ms",
                STEP.as_secs_f64() * 1e3,
                took.as_secs_f64() * 1e3
            ));
        }
        for (tid, &delay) in &now_waited {
            let wait = delay.saturating_sub(waited.get(tid).copied().unwrap_or(delay));
            if wait > CPU_WAIT {
                longest_wait = longest_wait.max(wait);
                causes.push(format!(
                    "thread {tid} {:?} waited {:.3} ms for a CPU",
                    threads.known.get(tid).map_or("", |(name, _)| name.as_str()),
                    wait.as_secs_f64() * 1e3
                ));
            }
        }
        if !causes.is_empty() {
            // The kernel counts a wait when the thread gets a CPU again, within this step;
            // the wait itself may have begun before the step did.
            stalls.push(Stall {
                start: start.checked_sub(longest_wait).unwrap_or(start),
                end,
                cause: causes.join(", "),
            });
        }
        start = end;
        waited = now_waited;
    }
    stalls
}

/// The threads of this process whose waits for a CPU the watch counts.
struct Threads {
    /// The id of the thread that started the watch, if the kernel told it.
    caller: Option<String>,
    /// The beginnings of the names of the other threads to count.
    named: &'static [&'static str],
    /// Each thread seen so far, by id: its name and whether it is counted.
    known: HashMap<String, (String, bool)>,
}

impl Threads {
    /// How long each counted thread has waited for a CPU in all, by thread id; empty where
    /// the kernel keeps no scheduler statistics.
    fn run_delays(&mut self) -> HashMap<String, Duration> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return HashMap::new();
        };
        tasks
            .filter_map(|task| {
                let task = task.ok()?;
                let tid = task.file_name().to_string_lossy().into_owned();
                let (_, counted) = self.known.entry(tid.clone()).or_insert_with(|| {
                    let name = std::fs::read_to_string(task.path().join("comm"))
                        .map(|comm| comm.trim_end().to_owned())
                        .unwrap_or_default();
                    let counted = self.caller.as_ref() == Some(&tid)
                        || self.named.iter().any(|named| name.starts_with(named));
                    (name, counted)
                });
                if !*counted {
                    return None;
                }
                // schedstat: time on a CPU, time waiting for one (both in ns), timeslices run.
                let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
                let waited: u64 = stat.split_whitespace().nth(1)?.parse().ok()?;
                Some((tid, Duration::from_nanos(waited)))
            })
            .collect()
    }
}
