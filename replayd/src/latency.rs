//! `--pace model`: the latency shape of the real provider, synthesised from the
//! recording's own measurements per provider and model. At start-up every streamed
//! recording gives a time to first token (its first event's offset) and, when it reports
//! output tokens and has two events or more, a rate (output tokens over the time from
//! the first event to the last). Serving a stream then draws, for its provider and model,
//! one recorded time to first token and one recorded rate, each chosen uniformly and
//! multiplied by a log-normal jitter `e^N(0, 0.1²)` (median 1, about ±10%), and lays the
//! recording's events out again: the first at the drawn time to first token, the others
//! spread over `output tokens / rate` in their recorded proportions. So the served
//! medians follow the recording's, and the spread around them is the recording's own.
//! Draws come from a hash of the run's seed, the provider and model, and the stream's
//! index among that model's streams: the same seed and request order give the same
//! timings. A model with no streamed recording is served at its recorded pace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use llmsim_snapshot::provider::Provider;

use crate::faults::{mix, unit};
use crate::response::TimedChunk;

/// Standard deviation of the log of the jitter factor.
const JITTER_SIGMA: f64 = 0.1;

/// One stream's synthesised timing: its events go out at `recorded offset / factor`
/// after the request's arrival moved by `shift_ms` (which may be negative).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Milliseconds added to the request's arrival before the offsets count.
    pub shift_ms: f64,
    /// Recorded offsets are divided by this.
    pub factor: f64,
}

/// What one provider and model's recordings measured.
#[derive(Debug, Default)]
struct Measured {
    /// Times to first token, ms.
    ttft_ms: Vec<f64>,
    /// Output tokens per second.
    tokens_per_second: Vec<f64>,
    /// Streams served so far, for the draws.
    served: AtomicU64,
}

/// The measured distributions of the recording, by provider and model.
#[derive(Debug, Default)]
pub struct LatencyModel {
    seed: u64,
    by_model: HashMap<(Provider, String), Measured>,
}

impl LatencyModel {
    /// An empty model drawing with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            by_model: HashMap::new(),
        }
    }

    /// Adds one recorded stream: its events and its output tokens.
    pub fn add(
        &mut self,
        provider: Provider,
        model: &str,
        chunks: &[TimedChunk],
        output_tokens: Option<u64>,
    ) {
        let Some(first) = chunks.first().map(|c| c.offset_ms) else {
            return;
        };
        if !first.is_finite() || first < 0.0 {
            return;
        }
        let measured = self
            .by_model
            .entry((provider, model.to_owned()))
            .or_default();
        measured.ttft_ms.push(first);
        let span_ms = chunks.last().map_or(0.0, |c| c.offset_ms) - first;
        if let Some(tokens) = output_tokens.filter(|t| *t > 0)
            && span_ms.is_finite()
            && span_ms > 0.0
        {
            #[expect(
                clippy::cast_precision_loss,
                reason = "token counts are far below 2^52"
            )]
            measured
                .tokens_per_second
                .push(tokens as f64 * 1000.0 / span_ms);
        }
    }

    /// Whether nothing was measured.
    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    /// The timing of the next stream of `provider` and `model` whose recording has
    /// `chunks` and `output_tokens`; `None` when nothing was measured for that model.
    pub fn schedule(
        &self,
        provider: Provider,
        model: &str,
        chunks: &[TimedChunk],
        output_tokens: Option<u64>,
    ) -> Option<Schedule> {
        let measured = self.by_model.get(&(provider, model.to_owned()))?;
        let n = measured.served.fetch_add(1, Ordering::Relaxed);
        let key = mix(&[hash_str(provider.as_str()), hash_str(model)]);
        let ttft_ms = self.draw(&measured.ttft_ms, key, n, 0)?;
        let first = chunks.first()?.offset_ms;
        let span_ms = chunks.last().map_or(0.0, |c| c.offset_ms) - first;
        let stretch = match (
            self.draw(&measured.tokens_per_second, key, n, 1),
            output_tokens.filter(|t| *t > 0),
        ) {
            (Some(rate), Some(tokens)) if span_ms > 0.0 => {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "token counts are far below 2^52"
                )]
                let duration_ms = tokens as f64 * 1000.0 / rate;
                duration_ms / span_ms
            }
            _ => 1.0,
        };
        (stretch.is_finite() && stretch > 0.0).then_some(Schedule {
            shift_ms: ttft_ms - first * stretch,
            factor: 1.0 / stretch,
        })
    }

    /// A recorded value chosen by the seed, times the jitter.
    fn draw(&self, values: &[f64], key: u64, n: u64, what: u64) -> Option<f64> {
        if values.is_empty() {
            return None;
        }
        let len = values.len() as u64;
        #[expect(clippy::cast_possible_truncation, reason = "an index below len")]
        let pick = values[(mix(&[self.seed, key, n, what, 0]) % len) as usize];
        // Box-Muller: a standard normal from two uniforms.
        let u1 = unit(mix(&[self.seed, key, n, what, 1])).max(f64::MIN_POSITIVE);
        let u2 = unit(mix(&[self.seed, key, n, what, 2]));
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Some(pick * (JITTER_SIGMA * normal).exp())
    }
}

fn hash_str(text: &str) -> u64 {
    let words: Vec<u64> = text.bytes().map(u64::from).collect();
    mix(&words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stream(first_ms: f64, span_ms: f64, events: usize) -> Vec<TimedChunk> {
        (0..events)
            .map(|i| {
                #[expect(clippy::cast_precision_loss, reason = "small test counts")]
                let at = first_ms + span_ms * i as f64 / (events - 1) as f64;
                TimedChunk {
                    offset_ms: at,
                    bytes: Bytes::from_static(b"data: x\n\n"),
                }
            })
            .collect()
    }

    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    #[test]
    fn served_medians_follow_the_recorded_ones() {
        let mut model = LatencyModel::new(3);
        // Time to first token 200..=400 ms, 50 tokens over 500..=1500 ms.
        for i in 0..21 {
            let i = f64::from(i);
            let chunks = stream(200.0 + i * 10.0, 500.0 + i * 50.0, 10);
            model.add(Provider::OpenAi, "m", &chunks, Some(50));
        }
        let served = stream(300.0, 1000.0, 10);
        let mut ttft = Vec::new();
        let mut rate = Vec::new();
        for _ in 0..500 {
            let s = model
                .schedule(Provider::OpenAi, "m", &served, Some(50))
                .unwrap();
            let at = |offset: f64| s.shift_ms + offset / s.factor;
            ttft.push(at(300.0));
            rate.push(50.0 * 1000.0 / (at(1300.0) - at(300.0)));
        }
        let (ttft, rate) = (median(ttft), median(rate));
        assert!(
            (ttft - 300.0).abs() < 30.0,
            "median time to first token {ttft}"
        );
        let recorded_rate = 50.0 * 1000.0 / 1000.0;
        assert!(
            (rate - recorded_rate).abs() < recorded_rate * 0.1,
            "median rate {rate}"
        );
        assert!(
            model
                .schedule(Provider::OpenAi, "other", &served, Some(50))
                .is_none()
        );
    }
}
