//! Start-up and lookup cost of replay on a large snapshot: N exchange files
//! (100k by default) are loaded, validated, signed and indexed as `replayd`
//! does before serving, then every recorded request is looked up once.
//! Loading the snapshot whole (`store::load`, as the report and HAR export
//! do) is measured too. Reading the same files' bytes is measured side by
//! side as the floor that any loader pays, so the report gives ratios rather
//! than absolute times alone. The page cache is warmed first, so the floor is
//! memory, not the disk.
//!
//! These machines are noisy, so start-up is measured several times, each in a
//! fresh process as `replayd` starts (a warm allocator would flatter it), in
//! turn with the floor; the report gives medians and ranges.
//!
//! Run with `cargo xtask bench index [N]`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use llmsim_replayd::{
    engine::{Engine, Outcome},
    options::ReplayOptions,
    request::ReplayRequest,
};
use llmsim_snapshot::{model::Exchange, store, usage};
use llmsim_tests::snapshot;
use serde_json::json;

/// Start-up measurements, each alternating with a floor measurement.
const ROUNDS: usize = 5;
/// The argument that makes this program one start-up measurement: it loads the
/// snapshot in DIR and prints the milliseconds taken.
const STARTUP_ONCE: &str = "--startup-once";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir] = args.as_slice()
        && flag == STARTUP_ONCE
    {
        let start = Instant::now();
        let engine =
            Engine::load(Path::new(dir), ReplayOptions::default()).expect("start the engine");
        println!("{}", ms(start.elapsed()));
        // Exiting frees it all at once; dropping it piece by piece is not start-up.
        std::mem::forget(engine);
        return;
    }
    let count: usize = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-snapshot-{count}"));
    generate(&dir, count);

    // A first pass warms the page cache, so every step below reads from memory.
    read_all(&dir);
    let mut floors = Vec::new();
    let mut startups = Vec::new();
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        bytes = read_all(&dir);
        floors.push(ms(start.elapsed()));
        startups.push(startup_in_a_fresh_process(&dir));
    }

    let start = Instant::now();
    let snapshot = store::load(&dir).expect("load the snapshot");
    let load = ms(start.elapsed());
    let requests: Vec<ReplayRequest> = snapshot
        .exchanges
        .iter()
        .map(|r| request_of(&r.exchange))
        .collect();
    drop(snapshot);

    let engine = Engine::load(&dir, ReplayOptions::default()).expect("start the engine");
    let start = Instant::now();
    let hits = requests
        .iter()
        .filter(|r| matches!(engine.lookup(r), Outcome::Hit(_)))
        .count();
    let lookups = ms(start.elapsed());
    assert_eq!(hits, count, "every recorded request must hit");

    let (floor, floor_range) = median_and_range(floors);
    let (startup, startup_range) = median_and_range(startups);
    println!(
        "replay index, {count} exchanges ({} MB of files); medians of {ROUNDS} runs, ranges in brackets",
        bytes / 1_000_000
    );
    println!("  read the files' bytes      {floor:>9.1} ms   1.00x (floor)   {floor_range}");
    println!(
        "  load (read + parse)        {load:>9.1} ms   {:.2}x   (one run)",
        load / floor
    );
    println!(
        "  replay start-up            {startup:>9.1} ms   {:.2}x   {startup_range}   (read, parse, validate, sign, index; a fresh process each)",
        startup / floor
    );
    println!(
        "  {count} lookups              {lookups:>9.1} ms   {:.2} us each",
        lookups * 1e3 / f64::from(u32::try_from(count).unwrap_or(u32::MAX))
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// This program again, as [`STARTUP_ONCE`]: its start-up time in milliseconds.
fn startup_in_a_fresh_process(dir: &Path) -> f64 {
    let output = Command::new(std::env::current_exe().expect("this program's path"))
        .arg(STARTUP_ONCE)
        .arg(dir)
        .output()
        .expect("run a start-up");
    assert!(
        output.status.success(),
        "the start-up run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the start-up run prints its milliseconds")
}

/// The median, and `[min-max]`.
fn median_and_range(mut values: Vec<f64>) -> (f64, String) {
    values.sort_by(f64::total_cmp);
    let range = format!(
        "[{:.0}-{:.0}]",
        values.first().copied().unwrap_or(f64::NAN),
        values.last().copied().unwrap_or(f64::NAN)
    );
    (values[values.len() / 2], range)
}

/// Writes `count` distinct chat-completion exchanges once; later runs reuse them.
fn generate(dir: &Path, count: usize) {
    let exchanges = dir.join(store::EXCHANGES_DIR);
    let marker = dir.join("generated-with-summaries");
    if marker.exists() && std::fs::read_dir(&exchanges).map_or(0, Iterator::count) == count {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&exchanges).expect("create the bench snapshot");
    for seq in 1..=count {
        let mut exchange = snapshot::exchange(json!({
            "seq": seq,
            "provider": "openai",
            "host": "api.openai.com",
            "scheme": "https",
            "process": {"pid": 1, "comm": "bench", "exe": null},
            "ttfb_ms": 300.0,
            "duration_ms": 800.0,
            "model": "gpt-4o-mini",
            "request": {
                "method": "POST",
                "path": "/v1/chat/completions",
                "headers": [["content-type", "application/json"]],
                "body": {"kind": "json", "content_encoding": null, "json": {
                    "model": "gpt-4o-mini",
                    "temperature": 0.2,
                    "messages": [
                        {"role": "system", "content": "You triage support tickets into a category and a priority."},
                        {"role": "user", "content": format!("Ticket {seq}: the invoice export fails with a timeout after the upgrade.")}
                    ]
                }}
            },
            "response": {
                "status": 200,
                "headers": [["content-type", "application/json"]],
                "body": {"kind": "json", "content_encoding": null, "json": {
                    "id": format!("chatcmpl-{seq}"),
                    "object": "chat.completion",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": format!("billing, high ({seq})")}}],
                    "usage": {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}
                }}
            }
        }));
        // With the usage summary capture stores beside every exchange.
        exchange.summary = usage::summarize(&exchange);
        let name = format!("{seq:06}-openai-post-v1-chat-completions.json");
        std::fs::write(
            exchanges.join(name),
            serde_json::to_vec_pretty(&exchange).expect("json"),
        )
        .expect("write an exchange");
    }
    std::fs::write(marker, "").expect("mark the bench snapshot");
}

fn read_all(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(store::EXCHANGES_DIR))
        .expect("exchanges dir")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read").len())
        .sum()
}

/// The recorded request as openai-python sends it, with the headers it adds to every call.
fn request_of(exchange: &Exchange) -> ReplayRequest {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "api.openai.com"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.99.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.12.3"),
        ("authorization", "Bearer sk-replay-needs-no-key"),
        ("x-stainless-async", "false"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-read-timeout", "600"),
    ] {
        headers.insert(name, value.parse().expect("header"));
    }
    ReplayRequest {
        method: exchange.request.method.clone(),
        host: exchange.host.clone(),
        path: exchange.request.path.clone(),
        headers,
        body: Bytes::from(exchange.request.body.to_bytes()),
    }
}
