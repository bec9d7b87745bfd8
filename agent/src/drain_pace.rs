//! When the agent drains the ring buffer without being woken. Data records wake
//! it only once `RING_WAKEUP_BYTES` are waiting, so smaller amounts are collected
//! by a timer: every [`BUSY`] while records keep coming, backing off (the wait
//! doubles after each drain that found nothing) to [`IDLE`] while none do. A
//! capture whose targets are quiet then drains about 6 times a second instead of
//! 100, and a record waits at most [`IDLE`] to be read.

use std::time::Duration;

use tokio::time::Instant;

/// The wait between drains while records keep coming.
pub const BUSY: Duration = Duration::from_millis(10);

/// The longest wait between drains, reached after drains that found nothing.
pub const IDLE: Duration = Duration::from_millis(160);

/// The timer's state: the current wait and when the next drain is due.
#[derive(Debug)]
pub struct DrainPace {
    wait: Duration,
    due: Instant,
}

impl DrainPace {
    /// The first drain is due [`BUSY`] from `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            wait: BUSY,
            due: now + BUSY,
        }
    }

    /// When the next drain is due.
    pub fn due(&self) -> Instant {
        self.due
    }

    /// A drain at `now` read `records`: the next is due [`BUSY`] later if it read any,
    /// else after twice the last wait, at most [`IDLE`].
    pub fn drained(&mut self, now: Instant, records: usize) {
        self.wait = if records > 0 {
            BUSY
        } else {
            (self.wait * 2).min(IDLE)
        };
        self.due = now + self.wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_while_drains_find_nothing_and_resets_when_one_does() {
        let start = Instant::now();
        let mut pace = DrainPace::new(start);
        assert_eq!(pace.due(), start + BUSY);
        let waits: Vec<Duration> = (0..6)
            .map(|_| {
                pace.drained(start, 0);
                pace.due() - start
            })
            .collect();
        let ms = Duration::from_millis;
        assert_eq!(waits, [ms(20), ms(40), ms(80), ms(160), ms(160), ms(160)]);
        pace.drained(start, 3);
        assert_eq!(pace.due(), start + BUSY);
    }
}
