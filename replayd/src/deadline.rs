//! Waiting for an instant precisely, for stream pacing. tokio's own timer rounds each
//! deadline up to its next millisecond tick and then parks in whole milliseconds, so an
//! event could go out up to 2 ms late: the whole of the pacing tolerance. Here one thread
//! per process sleeps on a condition variable until the earliest deadline (a futex wait,
//! which the kernel times with its high-resolution timers) and wakes the tasks that are
//! due, within tens of microseconds of their instant and never before it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A wait for one instant at a time; a body keeps one and waits for each event in turn.
#[derive(Debug, Default)]
pub struct Deadline {
    /// The instant and task last handed to the timer thread.
    registered: Option<(Instant, Waker)>,
}

impl Deadline {
    /// Waits until `due` has passed; errs only if the timer thread cannot be started.
    pub async fn until(&mut self, due: Instant) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_until(cx, due)).await
    }

    /// Ready once `due` has passed; errs only if the timer thread cannot be started.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, due: Instant) -> Poll<io::Result<()>> {
        if Instant::now() >= due {
            self.registered = None;
            return Poll::Ready(Ok(()));
        }
        let current = self
            .registered
            .as_ref()
            .is_some_and(|(at, waker)| *at == due && waker.will_wake(cx.waker()));
        if !current {
            timer()?.add(due, cx.waker().clone());
            self.registered = Some((due, cx.waker().clone()));
        }
        Poll::Pending
    }
}

/// The process's timer thread and the deadlines it waits for.
struct Timer {
    pending: Mutex<BinaryHeap<Reverse<Pending>>>,
    earlier: Condvar,
}

/// A task to wake at `due`.
struct Pending {
    due: Instant,
    waker: Waker,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.due.cmp(&other.due)
    }
}

/// The timer, its thread started on first use.
fn timer() -> io::Result<&'static Timer> {
    static TIMER: OnceLock<Result<&'static Timer, io::ErrorKind>> = OnceLock::new();
    let started = TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            pending: Mutex::new(BinaryHeap::new()),
            earlier: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("replayd-pacer".to_owned())
            .spawn(|| timer.run())
            .map(|_| timer)
            .map_err(|e| e.kind())
    });
    started.map_err(|kind| io::Error::new(kind, "cannot start the pacing timer thread"))
}

impl Timer {
    fn add(&self, due: Instant, waker: Waker) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = pending.peek().is_none_or(|Reverse(first)| due < first.due);
        pending.push(Reverse(Pending { due, waker }));
        if earliest {
            self.earlier.notify_one();
        }
    }

    fn run(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            while pending
                .peek()
                .is_some_and(|Reverse(first)| first.due <= now)
            {
                if let Some(Reverse(due)) = pending.pop() {
                    due.waker.wake();
                }
            }
            pending = match pending.peek() {
                Some(Reverse(first)) => {
                    let wait = first.due - now;
                    self.earlier
                        .wait_timeout(pending, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .earlier
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}
