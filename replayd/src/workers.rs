//! Serving threads, one per core, as nginx's worker processes: each runs its own
//! single-threaded Tokio runtime, and the acceptor hands every accepted connection to the
//! thread serving the fewest. A connection's requests then never wait on another thread's
//! wake-up nor move between cores; under a saturating load, the multi-threaded runtime's
//! work stealing cost about a tenth of replayd's CPU in context switches. Accepting stays on
//! the caller's runtime, with the listeners, the DNS responder and the metrics.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use tokio::sync::{mpsc, watch};

/// Work for a serving thread: called there, inside its runtime.
type Job = Box<dyn FnOnce() + Send>;

/// One serving thread: its queue and how many connections it serves.
#[derive(Debug)]
struct Worker {
    queue: mpsc::UnboundedSender<Job>,
    serving: Arc<AtomicUsize>,
}

/// The serving threads. They run until this is dropped; then each stops, dropping (and so
/// closing) the connections it still serves, whoever holds a [`WorkersHandle`].
#[derive(Debug)]
pub struct Workers {
    handle: WorkersHandle,
    /// Dropped with `self`, which is what stops the threads.
    _stop: watch::Sender<()>,
}

/// Hands work to the serving threads; cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkersHandle {
    threads: Arc<[Worker]>,
}

/// Counts a connection served by a thread until the connection ends.
struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// One serving thread per core this process may use.
    pub fn per_core() -> io::Result<Self> {
        Self::start(thread::available_parallelism().map_or(1, usize::from))
    }

    /// `count` serving threads (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let (stop_all, stopped) = watch::channel(());
        let threads = (0..count.max(1))
            .map(|i| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
                let mut stop = stopped.clone();
                thread::Builder::new()
                    .name(format!("replayd-serve-{i}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            loop {
                                tokio::select! {
                                    Some(job) = jobs.recv() => job(),
                                    // Nothing is ever sent: this is the sender's drop.
                                    _ = stop.changed() => return,
                                }
                            }
                        });
                    })?;
                Ok(Worker {
                    queue,
                    serving: Arc::default(),
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Self {
            handle: WorkersHandle { threads },
            _stop: stop_all,
        })
    }

    /// A handle for handing them work.
    pub fn handle(&self) -> WorkersHandle {
        self.handle.clone()
    }
}

impl WorkersHandle {
    /// Runs the future `make` returns as a task of the thread serving the fewest
    /// connections; `make` is called on that thread, so what it registers with the runtime
    /// (a socket) belongs to that thread's runtime.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .threads
            .iter()
            .min_by_key(|w| w.serving.load(Ordering::Relaxed))
            .expect("at least one serving thread");
        worker.serving.fetch_add(1, Ordering::Relaxed);
        let serving = Serving(worker.serving.clone());
        let job: Job = Box::new(move || {
            let task = make();
            tokio::spawn(async move {
                task.await;
                drop(serving);
            });
        });
        // A send fails only once the threads have stopped (their `Workers` was dropped);
        // the job, and with it the connection, is then dropped as it would have been.
        let _ = worker.queue.send(job);
    }

    /// How many connections each thread serves.
    #[cfg(test)]
    fn serving(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|w| w.serving.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn work_goes_to_the_least_busy_thread_and_runs_there() {
        let owner = Workers::start(2).unwrap();
        let workers = owner.handle();
        let (release, held) = tokio::sync::watch::channel(false);
        let mut names = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            let mut held = held.clone();
            workers.spawn(move || {
                let name = thread::current().name().map(str::to_owned);
                async move {
                    let _ = tx.send(name);
                    let _ = held.wait_for(|released| *released).await;
                }
            });
            names.push(rx.await.unwrap().unwrap());
        }
        assert_eq!(workers.serving(), vec![2, 2]);
        names.sort();
        assert_eq!(
            names,
            [
                "replayd-serve-0",
                "replayd-serve-0",
                "replayd-serve-1",
                "replayd-serve-1"
            ]
        );
        release.send_replace(true);
        for _ in 0..200 {
            if workers.serving() == [0, 0] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("finished work still counted: {:?}", workers.serving());
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_tasks() {
        let workers = Workers::start(1).unwrap();
        let handle = workers.handle();
        let (started, running) = oneshot::channel();
        let (dropped_tx, dropped) = oneshot::channel::<()>();
        handle.spawn(move || async move {
            let _dropped = dropped_tx;
            let _ = started.send(());
            std::future::pending::<()>().await;
        });
        running.await.unwrap();
        drop(workers);
        // The sender inside the task goes with the task, though a handle is still held.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), dropped)
                .await
                .unwrap()
                .is_err()
        );
    }
}
