//! The HTML form of a report: one self-contained page (inline CSS, SVG and a
//! little JavaScript, no external URL) with the per-model table and three
//! charts: cost by provider, the latency distribution and a timeline of the
//! calls. Every recorded string is escaped, since recordings are not trusted.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use llmsim_snapshot::ledger::{CallLine, Group, Ledger, thousands, usd};
use llmsim_snapshot::provider::Provider;

use super::millis;

/// The whole page.
pub fn render(ledger: &Ledger, title: &str) -> String {
    let mut out = String::with_capacity(16 * 1024 + ledger.calls.len() * 400);
    let t = &ledger.total.totals;
    let prices: Vec<String> = ledger.prices.iter().map(ToString::to_string).collect();
    let prices = prices.join(", overridden by ");
    let first = ledger
        .calls
        .iter()
        .min_by(|a, b| a.start_offset_ms.total_cmp(&b.start_offset_ms))
        .map_or_else(|| "-".to_owned(), |c| readable_time(&c.started_at));
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llmsim report: {title}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>llmsim report</h1>
<p class="sub"><strong>{title}</strong> &middot; {calls} calls from {first} &middot; prices: {prices}</p>
</header>
<section class="cards">
{cards}</section>
"#,
        title = esc(title),
        calls = thousands(t.calls),
        first = esc(&first),
        prices = esc(&prices),
        cards = cards(ledger),
    );
    out.push_str(&table(ledger));
    out.push_str("<section class=\"charts\">\n");
    out.push_str(&cost_chart(ledger));
    out.push_str(&latency_chart(ledger));
    out.push_str("</section>\n");
    out.push_str(&timeline(ledger));
    let _ = write!(
        out,
        "<footer>Written by llmsim-agent {version}. Costs use list prices ({prices}); \
         they are estimates: override them with <code>--prices FILE</code>.</footer>\n\
         <script>{SCRIPT}</script>\n</body>\n</html>\n",
        version = env!("CARGO_PKG_VERSION"),
        prices = esc(&prices),
    );
    out
}

const STYLE: &str = r#"
:root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --bg: #fff; --panel: #f8f9fb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; padding: 24px; max-width: 1200px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2, figcaption { font-size: 15px; font-weight: 600; margin: 0 0 8px; }
.sub, footer { color: var(--muted); }
footer { margin-top: 24px; font-size: 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; margin: 16px 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 12px; }
.card .v { font-size: 20px; font-weight: 600; }
section { margin: 20px 0; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
th { cursor: pointer; user-select: none; color: var(--muted); font-weight: 600; }
th[aria-sort="ascending"]::after { content: " \25B2"; }
th[aria-sort="descending"]::after { content: " \25BC"; }
tfoot td { font-weight: 600; border-top: 2px solid var(--line); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; align-items: start; }
figure { margin: 0; background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
svg { display: block; width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg .label { fill: var(--fg); }
svg .bar:hover, svg .call:hover { opacity: 0.75; }
.legend { display: flex; flex-wrap: wrap; gap: 12px; color: var(--muted); font-size: 12px; margin-top: 6px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
.empty { color: var(--muted); font-style: italic; }
"#;

const SCRIPT: &str = r##"
(function () {
  "use strict";
  var root = document.documentElement;
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push(String(e.message));
    root.setAttribute("data-errors", errors.join(" | "));
  });
  var table = document.getElementById("groups");
  if (table && table.tHead && table.tBodies.length) {
    var heads = table.tHead.rows[0].cells;
    var sortBy = function (col) {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var dir = heads[col].getAttribute("aria-sort") === "ascending" ? -1 : 1;
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-value") || "";
        var y = b.cells[col].getAttribute("data-value") || "";
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return c * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      for (var j = 0; j < heads.length; j++) { heads[j].removeAttribute("aria-sort"); }
      heads[col].setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    };
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () { sortBy(col); });
    });
  }
  var calls = document.querySelectorAll("#timeline .call").length;
  root.setAttribute("data-calls", String(calls));
  root.setAttribute("data-rendered", "ok");
})();
"##;

fn cards(ledger: &Ledger) -> String {
    let t = &ledger.total.totals;
    let cost = if t.with_usage > t.unpriced {
        usd(t.cost_usd)
    } else {
        "-".to_owned()
    };
    let items = [
        ("Calls", thousands(t.calls)),
        ("Failed", thousands(t.failed)),
        ("Input tokens", thousands(t.usage.input_tokens)),
        ("Cached input", thousands(t.usage.cached_input_tokens)),
        ("Output tokens", thousands(t.usage.output_tokens)),
        ("Cost", cost),
        ("Recorded time", millis(Some(t.recorded_ms))),
        (
            "p50 / p95 latency",
            format!(
                "{} / {}",
                millis(ledger.total.latency_ms.p50),
                millis(ledger.total.latency_ms.p95)
            ),
        ),
    ];
    let mut out = String::new();
    for (k, v) in items {
        let _ = writeln!(
            out,
            "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{}</div></div>",
            esc(k),
            esc(&v)
        );
    }
    out
}

fn table(ledger: &Ledger) -> String {
    const HEADS: [&str; 12] = [
        "Provider", "Model", "Calls", "Failed", "Input", "Cached", "Output", "Cost", "p50", "p95",
        "TTFT p50", "TTFT p95",
    ];
    let mut out = String::from(
        "<section>\n<h2>By provider and model</h2>\n<table id=\"groups\">\n<thead><tr>",
    );
    for head in HEADS {
        let _ = write!(out, "<th scope=\"col\">{head}</th>");
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for group in &ledger.groups {
        out.push_str(&table_row(group, "td"));
    }
    out.push_str("</tbody>\n<tfoot>\n");
    out.push_str(&table_row(&ledger.total, "td"));
    out.push_str("</tfoot>\n</table>\n</section>\n");
    out
}

fn table_row(group: &Group, cell: &str) -> String {
    let t = &group.totals;
    let provider = group
        .provider
        .map_or_else(|| "total".to_owned(), |p| p.to_string());
    let model = if group.provider.is_none() {
        String::new()
    } else {
        group.model.clone().unwrap_or_else(|| "-".to_owned())
    };
    let priced = t.with_usage > t.unpriced;
    let cells: [(String, String); 12] = [
        (provider.clone(), provider),
        (model.clone(), model),
        (t.calls.to_string(), thousands(t.calls)),
        (t.failed.to_string(), thousands(t.failed)),
        (
            t.usage.input_tokens.to_string(),
            thousands(t.usage.input_tokens),
        ),
        (
            t.usage.cached_input_tokens.to_string(),
            thousands(t.usage.cached_input_tokens),
        ),
        (
            t.usage.output_tokens.to_string(),
            thousands(t.usage.output_tokens),
        ),
        (
            if priced {
                t.cost_usd.to_string()
            } else {
                "-1".to_owned()
            },
            if priced {
                usd(t.cost_usd)
            } else {
                "-".to_owned()
            },
        ),
        (num(group.latency_ms.p50), millis(group.latency_ms.p50)),
        (num(group.latency_ms.p95), millis(group.latency_ms.p95)),
        (num(group.ttft_ms.p50), millis(group.ttft_ms.p50)),
        (num(group.ttft_ms.p95), millis(group.ttft_ms.p95)),
    ];
    let mut out = String::from("<tr>");
    for (value, text) in cells {
        let _ = write!(
            out,
            "<{cell} data-value=\"{}\">{}</{cell}>",
            esc(&value),
            esc(&text)
        );
    }
    out.push_str("</tr>\n");
    out
}

fn num(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-1".to_owned(), |v| format!("{v:.3}"))
}

/// A color per provider, so every chart uses the same legend.
fn color(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "#10a37f",
        Provider::Anthropic => "#d97757",
        Provider::Gemini => "#4285f4",
        Provider::Xai => "#3f3f46",
        Provider::OpenRouter => "#6467f2",
        Provider::Generic => "#98a2b3",
    }
}

fn legend(providers: impl IntoIterator<Item = Provider>) -> String {
    let mut out = String::from("<div class=\"legend\">");
    for p in providers {
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{p}</span>",
            color(p)
        );
    }
    out.push_str("</div>");
    out
}

/// Horizontal bars: the summed cost of each provider's priced calls.
fn cost_chart(ledger: &Ledger) -> String {
    let mut by_provider: BTreeMap<Provider, (f64, u64)> = BTreeMap::new();
    for group in &ledger.groups {
        if let Some(p) = group.provider {
            let entry = by_provider.entry(p).or_default();
            entry.0 += group.totals.cost_usd;
            entry.1 += group.totals.calls;
        }
    }
    let mut out =
        String::from("<figure id=\"cost-chart\"><figcaption>Cost by provider</figcaption>\n");
    if by_provider.is_empty() {
        out.push_str("<p class=\"empty\">No calls.</p></figure>\n");
        return out;
    }
    let max = by_provider.values().map(|v| v.0).fold(0.0, f64::max);
    let (left, width, bar, gap) = (90.0, 300.0, 22.0, 10.0);
    #[expect(clippy::cast_precision_loss, reason = "at most six providers")]
    let height = by_provider.len() as f64 * (bar + gap) + gap;
    let _ = writeln!(
        out,
        "<svg viewBox=\"0 0 {:.0} {height:.0}\" role=\"img\" aria-label=\"Cost by provider\">",
        left + width + 110.0
    );
    let mut y = gap;
    for (provider, (cost, calls)) in &by_provider {
        let w = if max > 0.0 { cost / max * width } else { 0.0 };
        let _ = writeln!(
            out,
            "<text class=\"label\" x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{provider}</text>\
             <rect class=\"bar\" x=\"{left:.0}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar:.0}\" rx=\"3\" fill=\"{}\">\
             <title>{provider}: {} over {} calls</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left - 8.0,
            y + bar / 2.0 + 4.0,
            w.max(1.0),
            color(*provider),
            usd(*cost),
            thousands(*calls),
            left + w.max(1.0) + 6.0,
            y + bar / 2.0 + 4.0,
            usd(*cost),
        );
        y += bar + gap;
    }
    out.push_str("</svg>\n");
    if max <= 0.0 {
        out.push_str("<p class=\"empty\">No priced calls.</p>\n");
    }
    out.push_str("</figure>\n");
    out
}

/// A histogram of call latencies and times to first token in shared bins.
fn latency_chart(ledger: &Ledger) -> String {
    const BINS: usize = 12;
    const BINS_F: f64 = 12.0;
    let latencies: Vec<f64> = ledger
        .calls
        .iter()
        .filter(|c| c.status != 0)
        .map(|c| c.duration_ms)
        .collect();
    let ttfts: Vec<f64> = ledger.calls.iter().filter_map(|c| c.ttft_ms).collect();
    let mut out = String::from(
        "<figure id=\"latency-chart\"><figcaption>Latency distribution</figcaption>\n",
    );
    let top = latencies.iter().chain(&ttfts).copied().fold(0.0, f64::max);
    if latencies.is_empty() || top <= 0.0 {
        out.push_str("<p class=\"empty\">No timings.</p></figure>\n");
        return out;
    }
    let step = nice_step(top / BINS_F);
    let count = |values: &[f64]| {
        let mut bins = [0_u64; BINS];
        for v in values {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "clamped to the bin range"
            )]
            let i = ((v / step).floor().max(0.0) as usize).min(BINS - 1);
            bins[i] += 1;
        }
        bins
    };
    let (lat, ttft) = (count(&latencies), count(&ttfts));
    let max = lat.iter().chain(&ttft).copied().max().unwrap_or(1).max(1);
    let (left, bottom, width, height) = (36.0, 34.0, 440.0, 180.0);
    let slot = width / BINS_F;
    let _ = writeln!(
        out,
        "<svg viewBox=\"0 0 {:.0} {:.0}\" role=\"img\" aria-label=\"Latency distribution\">",
        left + width + 10.0,
        height + bottom + 10.0
    );
    #[expect(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
    let scale = |n: u64| n as f64 / max as f64 * height;
    for (i, (l, t)) in (0_u32..).zip(lat.iter().zip(&ttft)) {
        let x = left + f64::from(i) * slot;
        let lo = f64::from(i) * step;
        let range = format!("{}–{}", millis(Some(lo)), millis(Some(lo + step)));
        for (j, n, fill, what) in [
            (0.0, *l, "#4f6bed", "calls"),
            (1.0, *t, "#f59e0b", "first tokens"),
        ] {
            let h = scale(n);
            let _ = writeln!(
                out,
                "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{fill}\">\
                 <title>{range}: {n} {what}</title></rect>",
                x + 2.0 + j * (slot - 4.0) / 2.0,
                10.0 + height - h,
                (slot - 4.0) / 2.0,
            );
        }
        if i % 3 == 0 {
            let _ = writeln!(
                out,
                "<text x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
                height + 26.0,
                millis(Some(lo))
            );
        }
    }
    let _ = writeln!(
        out,
        "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#98a2b3\"/>\
         <text x=\"0\" y=\"18\">{max}</text><text x=\"0\" y=\"{:.1}\">0</text>",
        10.0 + height,
        left + width,
        10.0 + height,
        10.0 + height,
    );
    out.push_str("</svg>\n<div class=\"legend\"><span><i style=\"background:#4f6bed\"></i>latency (start to last byte)</span>\
                  <span><i style=\"background:#f59e0b\"></i>time to first token</span></div>\n</figure>\n");
    out
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10_f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// One row per call on a shared time axis: waiting until the first token,
/// then generating, colored by provider; failed calls outlined in red.
fn timeline(ledger: &Ledger) -> String {
    let mut out = String::from(
        "<section><figure id=\"timeline\"><figcaption>Timeline of the calls</figcaption>\n",
    );
    if ledger.calls.is_empty() {
        out.push_str("<p class=\"empty\">No calls.</p></figure></section>\n");
        return out;
    }
    let mut calls: Vec<&CallLine> = ledger.calls.iter().collect();
    calls.sort_by(|a, b| a.start_offset_ms.total_cmp(&b.start_offset_ms));
    let span = ledger.span_ms().max(1.0);
    #[expect(clippy::cast_precision_loss, reason = "call counts are far below 2^52")]
    let rows = calls.len() as f64;
    let row = (600.0 / rows).clamp(3.0, 18.0);
    let (left, width, top) = (8.0, 1000.0, 8.0);
    let height = top + rows * row + 30.0;
    let _ = writeln!(
        out,
        "<svg viewBox=\"0 0 {:.0} {height:.0}\" role=\"img\" aria-label=\"Timeline of the calls\">",
        left + width + 60.0
    );
    let x_at = |ms: f64| left + ms / span * width;
    let mut row_y = top;
    for call in &calls {
        let start = x_at(call.start_offset_ms);
        let bar = Bar {
            x: start,
            y: row_y,
            width: (x_at(call.start_offset_ms + call.duration_ms) - start).max(1.0),
            height: (row - 1.0).max(1.0),
            waiting: call
                .ttft_ms
                .map(|t| (x_at(call.start_offset_ms + t.min(call.duration_ms)) - start).max(0.0)),
        };
        bar.write(&mut out, call);
        row_y += row;
    }
    let axis = top + rows * row + 4.0;
    let _ = writeln!(
        out,
        "<line x1=\"{left}\" y1=\"{axis:.1}\" x2=\"{:.1}\" y2=\"{axis:.1}\" stroke=\"#98a2b3\"/>",
        left + width
    );
    for k in 0..=4 {
        let ms = span * f64::from(k) / 4.0;
        let anchor = if k == 0 {
            "start"
        } else if k == 4 {
            "end"
        } else {
            "middle"
        };
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">+{}</text>",
            x_at(ms),
            axis + 16.0,
            millis(Some(ms))
        );
    }
    out.push_str("</svg>\n");
    let mut providers: Vec<Provider> = calls.iter().map(|c| c.provider).collect();
    providers.sort();
    providers.dedup();
    out.push_str(&legend(providers));
    out.push_str(
        "<p class=\"sub\">Light: waiting for the first token; dark: generating; red outline: failed.</p>\n\
         </figure></section>\n",
    );
    out
}

/// One call's row in the timeline, in SVG units.
struct Bar {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    /// Width of the part before the first token, when known.
    waiting: Option<f64>,
}

impl Bar {
    fn write(&self, out: &mut String, call: &CallLine) {
        let Self {
            x,
            y,
            width,
            height,
            waiting,
        } = *self;
        let fill = color(call.provider);
        let stroke = if call.succeeded() {
            ""
        } else {
            " stroke=\"#d92d20\" stroke-width=\"1.5\""
        };
        let _ = write!(out, "<g class=\"call\"><title>{}</title>", call_title(call));
        match waiting {
            Some(wait) if wait > 0.0 && wait < width => {
                let _ = write!(
                    out,
                    "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{wait:.2}\" height=\"{height:.2}\" fill=\"{fill}\" opacity=\"0.35\"{stroke}/>\
                     <rect x=\"{:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{height:.2}\" fill=\"{fill}\"{stroke}/>",
                    x + wait,
                    width - wait,
                );
            }
            _ => {
                let _ = write!(
                    out,
                    "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{width:.2}\" height=\"{height:.2}\" fill=\"{fill}\"{stroke}/>"
                );
            }
        }
        out.push_str("</g>\n");
    }
}

fn call_title(call: &CallLine) -> String {
    let mut title = format!(
        "#{} {} {} · {} · {}",
        call.seq,
        call.provider,
        call.model.as_deref().unwrap_or("-"),
        if call.status == 0 {
            "no response".to_owned()
        } else {
            call.status.to_string()
        },
        millis(Some(call.duration_ms)),
    );
    if let Some(t) = call.ttft_ms {
        let _ = write!(title, " (first token {})", millis(Some(t)));
    }
    if let Some(u) = call.usage {
        let _ = write!(
            title,
            " · {} in / {} out",
            thousands(u.input_tokens),
            thousands(u.output_tokens)
        );
    }
    if let Some(c) = call.cost_usd {
        let _ = write!(title, " · {}", usd(c));
    }
    esc(&title)
}

/// `2026-07-01T09:00:00.123456Z` as `2026-07-01 09:00:00 UTC`.
fn readable_time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..19)) {
        (Some(date), Some(time)) if rfc3339.ends_with('Z') => format!("{date} {time} UTC"),
        _ => rfc3339.to_owned(),
    }
}

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
