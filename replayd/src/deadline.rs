//! Waiting for an instant precisely, for stream pacing. tokio's own timer rounds each
//! deadline up to its next millisecond tick and then parks in whole milliseconds, so an
//! event could go out up to 2 ms late: the whole of the pacing tolerance. Here each thread
//! that paces streams keeps its own timer: the deadlines its tasks wait for, earliest
//! first, and one timer file descriptor (`timerfd`, timed by the kernel's high-resolution
//! timers) in the thread's own poller, set for the earliest. When it fires, the kernel wakes
//! that thread directly, which wakes every task then due, within tens of microseconds of
//! its instant and never before it: no other thread has to be given a CPU in between, and
//! one expiry serves every event due by then.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A wait for one instant at a time; a body keeps one and waits for each event in turn.
#[derive(Debug, Default)]
pub struct Deadline {
    /// The instant and task last handed to a timer, and that timer.
    registered: Option<(Instant, Waker, Arc<Timer>)>,
}

impl Deadline {
    /// Waits until `due` has passed; errs only if no timer can be made.
    pub async fn until(&mut self, due: Instant) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_until(cx, due)).await
    }

    /// Ready once `due` has passed; errs only if no timer can be made. Must be polled
    /// inside a Tokio runtime with I/O enabled.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, due: Instant) -> Poll<io::Result<()>> {
        if Instant::now() >= due {
            self.registered = None;
            return Poll::Ready(Ok(()));
        }
        let current = self.registered.as_ref().is_some_and(|(at, waker, timer)| {
            *at == due && waker.will_wake(cx.waker()) && timer.is_driven()
        });
        if !current {
            let timer = this_threads_timer()?;
            timer.add(due, cx.waker().clone())?;
            self.registered = Some((due, cx.waker().clone(), timer));
        }
        Poll::Pending
    }
}

thread_local! {
    /// The timer of the thread, started by its first wait.
    static TIMER: RefCell<Option<Arc<Timer>>> = const { RefCell::new(None) };
}

/// The current thread's timer; a new one if it has none, or if the runtime that drove the
/// last one has shut down.
fn this_threads_timer() -> io::Result<Arc<Timer>> {
    TIMER.with_borrow_mut(|slot| {
        if let Some(timer) = slot.as_ref().filter(|t| t.is_driven()) {
            return Ok(Arc::clone(timer));
        }
        let timer = Timer::start()?;
        *slot = Some(Arc::clone(&timer));
        Ok(timer)
    })
}

/// A thread's deadlines and the timer, always set for the earliest of them.
#[derive(Debug)]
struct Timer {
    fd: AsyncFd<OwnedFd>,
    pending: Mutex<BinaryHeap<Reverse<Pending>>>,
    /// Whether the task that wakes the waiting tasks still runs.
    driven: AtomicBool,
}

/// A task to wake at `due`.
#[derive(Debug)]
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

impl Timer {
    /// A timer on the monotonic clock (the clock `Instant` reads) in the current runtime's
    /// poller, and the task that wakes its waiting tasks.
    fn start() -> io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("a pacing timer needs a Tokio runtime"))?;
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // tokio deprecates its safe constructor because some types can close or change their
        // descriptor under it (the replacement is `unsafe`); an `OwnedFd` it owns cannot.
        #[expect(deprecated, reason = "an owned descriptor stays open and the same")]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        let timer = Arc::new(Self {
            fd,
            pending: Mutex::default(),
            driven: AtomicBool::new(true),
        });
        runtime.spawn(Arc::clone(&timer).drive());
        Ok(timer)
    }

    fn is_driven(&self) -> bool {
        self.driven.load(Ordering::Acquire)
    }

    /// Adds a task to wake at `due`, moving the timer earlier if `due` is the earliest.
    fn add(&self, due: Instant, waker: Waker) -> io::Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = pending.peek().is_none_or(|Reverse(first)| due < first.due);
        pending.push(Reverse(Pending { due, waker }));
        if earliest {
            self.set(due)?;
        }
        Ok(())
    }

    /// Sets the timer to expire at `due` (in the future), counted from an instant read
    /// before the call, so that it can only expire at `due` or after.
    fn set(&self, due: Instant) -> io::Result<()> {
        // At least a nanosecond: zero disarms.
        let after = due
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let value = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(after.subsec_nanos()),
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &value)?;
        Ok(())
    }

    /// At each expiry, wakes every task then due and sets the timer for the next; runs
    /// until its runtime shuts down.
    async fn drive(self: Arc<Self>) {
        /// When the task ends, whichever way, marks the timer as no longer driven and wakes
        /// every task still waiting, which then waits on a new timer instead of for ever.
        struct Driving<'a>(&'a Timer);
        impl Drop for Driving<'_> {
            fn drop(&mut self) {
                self.0.driven.store(false, Ordering::Release);
                let pending = std::mem::take(
                    &mut *self
                        .0
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                for Reverse(waiting) in pending {
                    waiting.waker.wake();
                }
            }
        }
        let _driving = Driving(&self);
        let mut due_now = Vec::new();
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return;
            };
            // The expiry count; `WouldBlock` means the readiness was stale.
            let mut expiries = [0_u8; 8];
            let read = rustix::io::read(self.fd.get_ref(), &mut expiries);
            ready.clear_ready();
            match read {
                Ok(_) => {}
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(e) => {
                    tracing::error!("pacing timer: {e}");
                    return;
                }
            }
            {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                while pending
                    .peek()
                    .is_some_and(|Reverse(first)| first.due <= now)
                {
                    if let Some(Reverse(waiting)) = pending.pop() {
                        due_now.push(waiting.waker);
                    }
                }
                if let Some(Reverse(next)) = pending.peek()
                    && let Err(e) = self.set(next.due)
                {
                    tracing::error!("pacing timer: {e}");
                    return;
                }
            }
            for waker in due_now.drain(..) {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_at_its_instant_and_never_before_it() {
        let mut deadline = Deadline::default();
        for step_us in [3_000, 200, 1_500] {
            let due = Instant::now() + Duration::from_micros(step_us);
            deadline.until(due).await.unwrap();
            let after = Instant::now();
            assert!(after >= due, "woke {:?} early", due - after);
        }
    }

    #[tokio::test]
    async fn waits_on_one_thread_end_in_the_order_of_their_instants() {
        let start = Instant::now();
        let offsets_ms = [9_u64, 2, 5, 2, 7];
        let waits = offsets_ms.map(|ms| {
            tokio::spawn(async move {
                let due = start + Duration::from_millis(ms);
                Deadline::default().until(due).await.unwrap();
                (ms, Instant::now())
            })
        });
        let mut ended = Vec::new();
        for wait in waits {
            let (ms, at) = wait.await.unwrap();
            assert!(at >= start + Duration::from_millis(ms));
            ended.push((at, ms));
        }
        ended.sort();
        let order: Vec<u64> = ended.iter().map(|(_, ms)| *ms).collect();
        assert_eq!(order, [2, 2, 5, 7, 9]);
    }

    #[test]
    fn a_thread_gets_a_new_timer_once_the_runtime_of_its_last_has_shut_down() {
        for _ in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let due = Instant::now() + Duration::from_millis(2);
                tokio::time::timeout(Duration::from_secs(5), Deadline::default().until(due))
                    .await
                    .expect("the wait ends")
                    .unwrap();
            });
        }
    }

    #[test]
    fn outside_a_runtime_a_wait_errs_instead_of_panicking() {
        let mut deadline = Deadline::default();
        let mut cx = Context::from_waker(Waker::noop());
        let due = Instant::now() + Duration::from_secs(1);
        match deadline.poll_until(&mut cx, due) {
            Poll::Ready(Err(e)) => assert!(e.to_string().contains("Tokio runtime"), "{e}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
