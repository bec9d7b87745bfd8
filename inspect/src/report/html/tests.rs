//! The page's structure, its escaping, and that headless Chromium renders it
//! with no console errors.

use std::path::PathBuf;
use std::process::Command;

use llmsim_snapshot::ledger::Ledger;
use llmsim_snapshot::prices::PriceTable;
use serde_json::json;

use super::*;
use crate::report::tests::{exchange, sample_exchanges};

fn sample_page() -> (String, usize) {
    let mut exchanges = sample_exchanges();
    // A hostile model name must come out as text.
    exchanges.push(exchange(
        "evil.example",
        "/v1/chat/completions",
        &json!({"model": "<script>alert(1)</script>\"'&"}),
        200,
        &json!({"kind": "empty"}),
        "2026-07-01T09:00:05Z",
        (1.0, 2.0),
    ));
    let n = exchanges.len();
    let ledger = Ledger::build(&exchanges, &PriceTable::builtin());
    (render(&ledger, "demo <snapshot>"), n)
}

#[test]
fn the_page_is_self_contained_and_escaped() {
    let (page, n) = sample_page();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for id in [
        "id=\"groups\"",
        "id=\"cost-chart\"",
        "id=\"latency-chart\"",
        "id=\"timeline\"",
    ] {
        assert!(page.contains(id), "{id} missing");
    }
    assert_eq!(page.matches("<svg ").count(), 3);
    assert_eq!(page.matches("<g class=\"call\">").count(), n);
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external URL"
    );
    assert!(
        !page.contains(" src=") && !page.contains("<link"),
        "nothing loaded"
    );
    assert!(!page.contains("<script>alert"), "recorded text is escaped");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
    assert!(page.contains("demo &lt;snapshot&gt;"));
    assert_eq!(page.matches("<script>").count(), 1, "only our own script");
    assert!(page.contains("claude-sonnet-4-5"));
}

#[test]
fn an_empty_ledger_renders() {
    let page = render(&Ledger::build([], &PriceTable::builtin()), "empty");
    assert!(page.contains("No calls."));
    assert!(page.contains("No timings."));
    assert!(page.trim_end().ends_with("</html>"));
}

#[test]
fn times_are_readable() {
    assert_eq!(
        readable_time("2026-07-01T09:00:00.123456Z"),
        "2026-07-01 09:00:00 UTC"
    );
    assert_eq!(
        readable_time("2026-07-01T09:00:00Z"),
        "2026-07-01 09:00:00 UTC"
    );
    assert_eq!(readable_time("garbage"), "garbage");
}

#[test]
fn nice_steps() {
    assert_eq!(nice_step(0.0), 1.0);
    assert_eq!(nice_step(f64::NAN), 1.0);
    assert_eq!(nice_step(3.0), 5.0);
    assert_eq!(nice_step(12.0), 20.0);
    assert_eq!(nice_step(70.0), 100.0);
    assert_eq!(nice_step(100.0), 100.0);
}

/// A headless Chromium on PATH (Debian's `chromium`), or `LLMSIM_CHROMIUM`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LLMSIM_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            [
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ]
            .map(|name| dir.join(name))
        })
        .find(|p| p.is_file())
}

/// Opens the page in headless Chromium: the script must run to its end
/// (`data-rendered="ok"`), see every call in the timeline, and the browser
/// must log no console message (an uncaught error is one).
#[test]
fn chromium_renders_the_page_without_console_errors() {
    let Some(browser) = chromium() else {
        llmsim_tests::requires(
            false,
            "report HTML in Chromium",
            "chromium is not installed (apt-get install chromium)",
        );
        return;
    };
    let (page, n) = sample_page();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    std::fs::write(&file, &page).unwrap();
    let output = Command::new("timeout")
        .arg("120")
        .arg(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    let dom = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n{log}",
        browser.display(),
        output.status
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages:\n{}",
        console.join("\n")
    );
    assert!(
        dom.contains("data-rendered=\"ok\""),
        "the script did not finish:\n{dom}"
    );
    assert!(!dom.contains("data-errors="), "script errors:\n{dom}");
    assert!(
        dom.contains(&format!("data-calls=\"{n}\"")),
        "timeline rows:\n{dom}"
    );
    assert!(dom.contains("<svg"), "charts rendered");
}
