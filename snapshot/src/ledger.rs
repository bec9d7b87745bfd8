//! The cost ledger: per-call lines (model, tokens, cost, latency) and totals
//! over a set of exchanges, grouped by provider and model, with latency and
//! time-to-first-token percentiles. `llmsim-agent report` renders it; the
//! capture summary and replayd's end-of-run report use [`Totals`] and
//! [`summarize_snapshot`] for "tokens and dollars recorded / not spent".

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::model::{Exchange, TokenUsage};
use crate::prices::{PriceSource, PriceTable};
use crate::provider::{Endpoint, Provider};
use crate::usage;

/// One exchange as the ledger sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallLine {
    /// The exchange's capture order.
    pub seq: u64,
    /// The provider, from the host.
    pub provider: Provider,
    /// The model as the request named it, else as the response did.
    pub model: Option<String>,
    /// The API call.
    pub endpoint: Endpoint,
    /// The response status (0: no response was seen).
    pub status: u16,
    /// When the request started, RFC 3339 in UTC.
    pub started_at: String,
    /// Milliseconds from the first call's start in the set to this one's.
    pub start_offset_ms: f64,
    /// Milliseconds from request start to the last response byte.
    pub duration_ms: f64,
    /// Time to first token, when known.
    pub ttft_ms: Option<f64>,
    /// Whether the response streamed.
    pub streamed: bool,
    /// Whether the exchange was flagged incomplete.
    pub incomplete: bool,
    /// Token counts, when the response reported them.
    pub usage: Option<TokenUsage>,
    /// What the call cost under the price table, when it has the model.
    pub cost_usd: Option<f64>,
}

impl CallLine {
    /// The line for `exchange`, priced with `prices`; `start_offset_ms` is 0
    /// until [`Ledger::build`] sets it.
    pub fn of(exchange: &Exchange, prices: &PriceTable) -> Self {
        let summary = usage::summary_of(exchange);
        let usage = summary.as_ref().and_then(|s| s.usage);
        let priced_model = summary
            .as_ref()
            .and_then(|s| s.model.clone())
            .or_else(|| exchange.model.clone());
        let cost_usd = usage.and_then(|u| {
            // The response's model is the more precise; fall back to the
            // request's when only that one is in the table.
            [priced_model.as_deref(), exchange.model.as_deref()]
                .into_iter()
                .flatten()
                .find_map(|m| prices.cost(exchange.provider, m, &u))
                .map(|c| c.total_usd)
        });
        let started_at = exchange
            .started_at
            .to_offset(UtcOffset::UTC)
            .format(&Rfc3339)
            .unwrap_or_default();
        Self {
            seq: exchange.seq,
            provider: exchange.provider,
            model: exchange
                .model
                .clone()
                .or_else(|| summary.as_ref().and_then(|s| s.model.clone())),
            endpoint: summary.as_ref().map_or_else(
                || Endpoint::classify(&exchange.request.method, &exchange.request.path),
                |s| s.endpoint,
            ),
            status: exchange.response.status,
            started_at,
            start_offset_ms: 0.0,
            duration_ms: finite_or_zero(exchange.duration_ms),
            ttft_ms: summary.as_ref().and_then(|s| s.ttft_ms),
            streamed: summary.as_ref().map_or(exchange.streamed, |s| s.streamed),
            incomplete: exchange.incomplete.is_some(),
            usage,
            cost_usd,
        }
    }

    /// Whether the call got a 2xx answer.
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Totals over a set of calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Exchanges counted.
    pub calls: u64,
    /// Of those, without a 2xx answer (no response counts as failed).
    pub failed: u64,
    /// Of those, flagged incomplete.
    pub incomplete: u64,
    /// Of those, with token counts.
    pub with_usage: u64,
    /// Summed token counts.
    pub usage: TokenUsage,
    /// Summed cost of the priced calls, in dollars.
    pub cost_usd: f64,
    /// Calls with token counts whose model has no price: their cost is
    /// missing from `cost_usd`.
    pub unpriced: u64,
    /// Summed recorded durations, in milliseconds: the wall time replay
    /// saves when it answers without pacing.
    pub recorded_ms: f64,
}

impl Totals {
    /// Adds one call.
    pub fn add(&mut self, line: &CallLine) {
        self.calls += 1;
        self.failed += u64::from(!line.succeeded());
        self.incomplete += u64::from(line.incomplete);
        if let Some(usage) = line.usage {
            self.with_usage += 1;
            self.usage += usage;
            match line.cost_usd {
                Some(cost) => self.cost_usd += cost,
                None => self.unpriced += 1,
            }
        }
        self.recorded_ms += line.duration_ms;
    }

    /// Adds one exchange, priced with `prices` (the capture summary's and
    /// replayd's per-exchange hook).
    pub fn add_exchange(&mut self, exchange: &Exchange, prices: &PriceTable) {
        self.add(&CallLine::of(exchange, prices));
    }
}

/// Totals of two sets of calls together (replayd's per-thread counts, merged).
impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, other: Self) {
        self.calls += other.calls;
        self.failed += other.failed;
        self.incomplete += other.incomplete;
        self.with_usage += other.with_usage;
        self.usage += other.usage;
        self.cost_usd += other.cost_usd;
        self.unpriced += other.unpriced;
        self.recorded_ms += other.recorded_ms;
    }
}

impl fmt::Display for Totals {
    /// `3 calls, 1,234 input tokens (1,024 cached), 56 output tokens, $0.0042`
    /// plus `(2 calls unpriced)` when some model had no price.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} call{}, {} input tokens",
            thousands(self.calls),
            if self.calls == 1 { "" } else { "s" },
            thousands(self.usage.input_tokens)
        )?;
        if self.usage.cached_input_tokens > 0 {
            write!(f, " ({} cached)", thousands(self.usage.cached_input_tokens))?;
        }
        write!(
            f,
            ", {} output tokens, {}",
            thousands(self.usage.output_tokens),
            usd(self.cost_usd)
        )?;
        if self.unpriced > 0 {
            write!(f, " ({} unpriced)", thousands(self.unpriced))?;
        }
        Ok(())
    }
}

/// Tokens and cost of `exchanges`: what a capture recorded, or what a replay
/// run served and so did not spend.
pub fn summarize_snapshot<'a>(
    exchanges: impl IntoIterator<Item = &'a Exchange>,
    prices: &PriceTable,
) -> Totals {
    let mut totals = Totals::default();
    for exchange in exchanges {
        totals.add_exchange(exchange, prices);
    }
    totals
}

/// The 50th and 95th percentiles of a set of timings (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median, in milliseconds.
    pub p50: Option<f64>,
    /// 95th percentile, in milliseconds.
    pub p95: Option<f64>,
}

impl Percentiles {
    /// From unsorted values; non-finite ones are ignored.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50: nearest_rank(&sorted, 50),
            p95: nearest_rank(&sorted, 95),
        }
    }
}

fn nearest_rank(sorted: &[f64], percent: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// One row of the ledger: a provider and model, or everything.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    /// The provider; `None` in the overall row.
    pub provider: Option<Provider>,
    /// The model; `None` in the overall row and for calls naming none.
    pub model: Option<String>,
    /// Counts, tokens and cost.
    #[serde(flatten)]
    pub totals: Totals,
    /// Request start to last byte, over calls that got a response.
    pub latency_ms: Percentiles,
    /// Time to first token, over calls that report one.
    pub ttft_ms: Percentiles,
}

impl Group {
    fn of(provider: Option<Provider>, model: Option<String>, lines: &[&CallLine]) -> Self {
        let mut totals = Totals::default();
        for line in lines {
            totals.add(line);
        }
        Self {
            provider,
            model,
            totals,
            latency_ms: Percentiles::of(
                lines
                    .iter()
                    .filter(|l| l.status != 0)
                    .map(|l| l.duration_ms),
            ),
            ttft_ms: Percentiles::of(lines.iter().filter_map(|l| l.ttft_ms)),
        }
    }
}

/// Everything `llmsim-agent report` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ledger {
    /// Where the prices came from and their dates.
    pub prices: Vec<PriceSource>,
    /// One row per provider and model, sorted.
    pub groups: Vec<Group>,
    /// All calls together.
    pub total: Group,
    /// Every call, in capture order.
    pub calls: Vec<CallLine>,
}

impl Ledger {
    /// The ledger of `exchanges`, priced with `prices`.
    pub fn build<'a>(
        exchanges: impl IntoIterator<Item = &'a Exchange>,
        prices: &PriceTable,
    ) -> Self {
        let exchanges: Vec<&Exchange> = exchanges.into_iter().collect();
        let first = exchanges.iter().map(|e| e.started_at).min();
        let mut calls: Vec<CallLine> = exchanges
            .iter()
            .map(|exchange| {
                let mut line = CallLine::of(exchange, prices);
                if let Some(first) = first {
                    line.start_offset_ms =
                        finite_or_zero((exchange.started_at - first).as_seconds_f64() * 1000.0);
                }
                line
            })
            .collect();
        calls.sort_by_key(|l| l.seq);
        let mut by_group: BTreeMap<(Provider, Option<String>), Vec<&CallLine>> = BTreeMap::new();
        for line in &calls {
            by_group
                .entry((line.provider, line.model.clone()))
                .or_default()
                .push(line);
        }
        let groups = by_group
            .into_iter()
            .map(|((provider, model), lines)| Group::of(Some(provider), model, &lines))
            .collect();
        let all: Vec<&CallLine> = calls.iter().collect();
        let total = Group::of(None, None, &all);
        Self {
            prices: prices.sources.clone(),
            groups,
            total,
            calls,
        }
    }

    /// The time span the calls cover, in milliseconds.
    pub fn span_ms(&self) -> f64 {
        self.calls
            .iter()
            .map(|c| c.start_offset_ms + c.duration_ms)
            .fold(0.0, f64::max)
    }

    /// When the first call started.
    pub fn first_start(&self) -> Option<OffsetDateTime> {
        self.calls
            .iter()
            .find(|c| c.start_offset_ms == 0.0)
            .and_then(|c| OffsetDateTime::parse(&c.started_at, &Rfc3339).ok())
    }
}

fn finite_or_zero(ms: f64) -> f64 {
    if ms.is_finite() { ms } else { 0.0 }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Dollars with enough decimals to see small calls: `$12.34`, `$0.0042`,
/// `$0.000018`.
pub fn usd(dollars: f64) -> String {
    let abs = dollars.abs();
    if abs == 0.0 {
        "$0.00".to_owned()
    } else if abs >= 1.0 {
        format!("${dollars:.2}")
    } else if abs >= 0.01 {
        format!("${dollars:.4}")
    } else {
        format!("${dollars:.6}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Body;
    use crate::usage::tests::{exchange, json_body};

    fn chat(model: &str, input: u64, output: u64, duration_ms: f64) -> Exchange {
        let body = json!({"object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": input, "completion_tokens": output}});
        exchange(
            "api.openai.com",
            "/v1/chat/completions",
            json!({"model": model}),
            json_body(body),
            duration_ms / 2.0,
            duration_ms,
        )
    }

    #[test]
    fn totals_add_tokens_and_cost() {
        let prices = PriceTable::builtin();
        let a = chat("gpt-4o-mini", 1_000_000, 0, 100.0);
        let b = chat("gpt-4o-mini", 0, 1_000_000, 300.0);
        let mut failed = chat("gpt-4o-mini", 0, 0, 10.0);
        failed.response.status = 500;
        failed.response.body = Body::default();
        let local = chat("llama3", 10, 10, 50.0);
        let totals = summarize_snapshot([&a, &b, &failed, &local], &prices);
        assert_eq!(totals.calls, 4);
        assert_eq!(totals.failed, 1);
        assert_eq!(totals.with_usage, 3);
        assert_eq!(totals.unpriced, 1);
        assert_eq!(totals.usage.input_tokens, 1_000_010);
        assert!((totals.cost_usd - 0.75).abs() < 1e-9, "{totals:?}");
        assert!((totals.recorded_ms - 460.0).abs() < 1e-9);
        assert_eq!(
            totals.to_string(),
            "4 calls, 1,000,010 input tokens, 1,000,010 output tokens, $0.7500 (1 unpriced)"
        );
    }

    #[test]
    fn ledger_groups_by_provider_and_model_with_percentiles() {
        let prices = PriceTable::builtin();
        let mut exchanges: Vec<Exchange> = (1_u32..=20)
            .map(|i| {
                let mut e = chat("gpt-4o", 10, 10, f64::from(i) * 10.0);
                e.seq = u64::from(i);
                e.started_at += time::Duration::seconds(i64::from(i));
                e
            })
            .collect();
        let mut claude = exchange(
            "api.anthropic.com",
            "/v1/messages",
            json!({"model": "claude-haiku-4-5"}),
            json_body(
                json!({"type": "message", "model": "claude-haiku-4-5-20251001", "content": [], "stop_reason": "end_turn",
                "usage": {"input_tokens": 100, "output_tokens": 20}}),
            ),
            40.0,
            50.0,
        );
        claude.seq = 21;
        exchanges.push(claude);
        let ledger = Ledger::build(&exchanges, &prices);
        assert_eq!(ledger.groups.len(), 2);
        assert_eq!(ledger.groups[0].provider, Some(Provider::OpenAi));
        assert_eq!(ledger.groups[1].model.as_deref(), Some("claude-haiku-4-5"));
        let gpt = &ledger.groups[0];
        assert_eq!(gpt.totals.calls, 20);
        assert_eq!(
            gpt.latency_ms,
            Percentiles {
                p50: Some(100.0),
                p95: Some(190.0)
            }
        );
        assert_eq!(gpt.ttft_ms.p50, Some(50.0));
        assert_eq!(ledger.total.totals.calls, 21);
        assert_eq!(ledger.calls.len(), 21);
        assert_eq!(ledger.calls[0].start_offset_ms, 1_000.0);
        assert_eq!(ledger.calls[19].start_offset_ms, 20_000.0);
        assert_eq!(
            ledger.calls[20].start_offset_ms, 0.0,
            "claude started first"
        );
        assert!(
            (ledger.span_ms() - 20_200.0).abs() < 1e-9,
            "{}",
            ledger.span_ms()
        );
        assert_eq!(
            ledger.first_start(),
            Some(time::macros::datetime!(2026-07-01 09:00:00 UTC))
        );
        let claude_cost = ledger.calls[20].cost_usd.unwrap();
        assert!((claude_cost - (100.0 * 1.0 + 20.0 * 5.0) / 1e6).abs() < 1e-12);
        let json = serde_json::to_value(&ledger).unwrap();
        assert_eq!(json["total"]["calls"], 21);
        assert_eq!(json["groups"][0]["latency_ms"]["p95"], 190.0);
        assert_eq!(json["prices"][0]["origin"], "built-in");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(Percentiles::of([]), Percentiles::default());
        assert_eq!(
            Percentiles::of([f64::NAN, 7.0]),
            Percentiles {
                p50: Some(7.0),
                p95: Some(7.0)
            }
        );
        assert_eq!(
            Percentiles::of([4.0, 1.0, 3.0, 2.0]),
            Percentiles {
                p50: Some(2.0),
                p95: Some(4.0)
            }
        );
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(12.345), "$12.35");
        assert_eq!(usd(0.0421), "$0.0421");
        assert_eq!(usd(0.000_018), "$0.000018");
    }
}
