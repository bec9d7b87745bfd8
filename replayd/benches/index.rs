//! Start-up and lookup cost of replay on a large snapshot: N exchange files
//! (100k by default) are loaded, validated, signed and indexed as `replayd`
//! does before serving, then every recorded request is looked up once.
//! Loading the snapshot whole (`store::load`, as the report and HAR export
//! do) is measured too. Reading the same files' bytes is measured side by
//! side in the same run as the floor that any loader pays, so the report gives
//! ratios rather than absolute times alone (these machines are noisy). The
//! page cache is warmed first, so the floor is memory, not the disk.
//!
//! Run with `cargo xtask bench index [N]`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use llmsim_snapshot::{model::Exchange, store, usage};
use replayd::{
    engine::{Engine, Outcome, ReplayRequest},
    options::ReplayOptions,
};
use serde_json::json;

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-snapshot-{count}"));
    generate(&dir, count);

    // A first pass warms the page cache, so every step below reads from memory.
    read_all(&dir);
    let start = Instant::now();
    let bytes = read_all(&dir);
    let read = start.elapsed();

    // Replay's start-up first, so it runs in a fresh process as `replayd` does.
    let start = Instant::now();
    let engine = Engine::load(&dir, ReplayOptions::default()).expect("start the engine");
    let startup = start.elapsed();

    let start = Instant::now();
    let snapshot = store::load(&dir).expect("load the snapshot");
    let load = start.elapsed();
    let requests: Vec<ReplayRequest> = snapshot
        .exchanges
        .iter()
        .map(|r| request_of(&r.exchange))
        .collect();
    drop(snapshot);

    let start = Instant::now();
    let hits = requests
        .iter()
        .filter(|r| matches!(engine.lookup(r), Outcome::Hit(_)))
        .count();
    let lookups = start.elapsed();
    assert_eq!(hits, count, "every recorded request must hit");

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "replay index, {count} exchanges ({} MB of files)",
        bytes / 1_000_000
    );
    println!(
        "  read the files' bytes      {:>9.1} ms   1.00x (floor)",
        ms(read)
    );
    println!(
        "  load (read + parse)        {:>9.1} ms   {:.2}x",
        ms(load),
        ms(load) / ms(read)
    );
    println!(
        "  replay start-up            {:>9.1} ms   {:.2}x   (read, parse, validate, sign, index)",
        ms(startup),
        ms(startup) / ms(read)
    );
    println!(
        "  {count} lookups              {:>9.1} ms   {:.2} us each",
        ms(lookups),
        ms(lookups) * 1e3 / f64::from(u32::try_from(count).unwrap_or(u32::MAX))
    );
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
        let exchange = json!({
            "format_version": 1,
            "seq": seq,
            "provider": "openai",
            "host": "api.openai.com",
            "scheme": "https",
            "process": {"pid": 1, "comm": "bench", "exe": null},
            "peer": null,
            "started_at": "2026-11-26T00:00:00Z",
            "ttfb_ms": 300.0,
            "duration_ms": 800.0,
            "incomplete": null,
            "streamed": false,
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
        });
        // With the usage summary capture stores beside every exchange.
        let mut exchange: Exchange = serde_json::from_value(exchange).expect("an exchange");
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

fn request_of(exchange: &Exchange) -> ReplayRequest {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("header"));
    ReplayRequest {
        method: exchange.request.method.clone(),
        host: exchange.host.clone(),
        path: exchange.request.path.clone(),
        headers,
        body: Bytes::from(exchange.request.body.to_bytes()),
    }
}
