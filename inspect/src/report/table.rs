//! The terminal form of a report: one row per provider and model, a total
//! row, and the date of the prices, aligned in plain text.

use std::fmt::Write as _;

use llmsim_snapshot::ledger::{Group, Ledger, thousands, usd};

use super::millis;

const HEADERS: [&str; 12] = [
    "provider", "model", "calls", "failed", "input", "cached", "output", "cost", "p50", "p95",
    "ttft p50", "ttft p95",
];

/// The report as a table, ending with a newline.
pub fn render(ledger: &Ledger) -> String {
    let mut rows: Vec<[String; 12]> = ledger.groups.iter().map(row).collect();
    let mut total = row(&ledger.total);
    "total".clone_into(&mut total[0]);
    total[1] = String::new();
    rows.push(total);
    let mut widths = HEADERS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    line(&mut out, &HEADERS.map(str::to_owned), &widths);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "{}", rule.join("  "));
    let last = rows.len() - 1;
    for (i, r) in rows.iter().enumerate() {
        if i == last && last > 0 {
            let _ = writeln!(out, "{}", rule.join("  "));
        }
        line(&mut out, r, &widths);
    }
    let prices: Vec<String> = ledger.prices.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "\nprices: {}", prices.join(", overridden by "));
    let unpriced = ledger.total.totals.unpriced;
    if unpriced > 0 {
        let _ = writeln!(
            out,
            "{unpriced} call{} with token counts but no price (their cost is not included; add them with --prices FILE)",
            if unpriced == 1 { "" } else { "s" }
        );
    }
    out
}

fn row(group: &Group) -> [String; 12] {
    let t = &group.totals;
    [
        group.provider.map(|p| p.to_string()).unwrap_or_default(),
        group.model.clone().unwrap_or_else(|| "-".to_owned()),
        thousands(t.calls),
        thousands(t.failed),
        thousands(t.usage.input_tokens),
        thousands(t.usage.cached_input_tokens),
        thousands(t.usage.output_tokens),
        if t.with_usage > t.unpriced {
            usd(t.cost_usd)
        } else {
            "-".to_owned()
        },
        millis(group.latency_ms.p50),
        millis(group.latency_ms.p95),
        millis(group.ttft_ms.p50),
        millis(group.ttft_ms.p95),
    ]
}

/// Text columns left-aligned, numbers right-aligned, two spaces apart.
fn line(out: &mut String, cells: &[String; 12], widths: &[usize; 12]) {
    let mut parts = Vec::with_capacity(12);
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        let pad = width.saturating_sub(cell.chars().count());
        if i < 2 {
            parts.push(format!("{cell}{}", " ".repeat(pad)));
        } else {
            parts.push(format!("{}{cell}", " ".repeat(pad)));
        }
    }
    let _ = writeln!(out, "{}", parts.join("  ").trim_end());
}

#[cfg(test)]
mod tests {
    use llmsim_snapshot::ledger::Ledger;
    use llmsim_snapshot::prices::PriceTable;

    use super::*;
    use crate::report::tests::sample_exchanges;

    #[test]
    fn one_row_per_provider_and_model_then_the_total() {
        let exchanges = sample_exchanges();
        let text = render(&Ledger::build(&exchanges, &PriceTable::builtin()));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("provider   model  "), "{text}");
        assert!(lines[0].ends_with("ttft p95"), "{text}");
        let gpt = lines.iter().find(|l| l.contains("gpt-4o-mini")).unwrap();
        // 50 input, 4 cached, 15 output; $0.15/$0.075/$0.60 per million.
        assert!(gpt.contains("   50 ") && gpt.contains(" 15 "), "{gpt}");
        assert!(gpt.contains("$0.000016"), "{gpt}");
        assert!(text.contains("claude-sonnet-4-5"), "{text}");
        let total = lines.iter().find(|l| l.starts_with("total")).unwrap();
        assert!(total.contains(" 6 ") && total.contains(" 1 "), "{total}");
        assert!(text.contains("prices: built-in as of 2026-11-20"), "{text}");
        assert!(
            text.contains("1 call with token counts but no price"),
            "{text}"
        );
        let llama = lines.iter().find(|l| l.contains("llama3")).unwrap();
        assert!(llama.contains("  -  "), "unpriced cost shows as -: {llama}");
        // Every row has the same width up to its last column.
        let rule = lines[1].len();
        assert!(
            lines.iter().take(lines.len() - 3).all(|l| l.len() <= rule),
            "{text}"
        );
    }

    #[test]
    fn an_empty_snapshot_still_renders() {
        let text = render(&Ledger::build([], &PriceTable::builtin()));
        assert!(text.contains("total"), "{text}");
    }
}
