//! Builders shared by the unit tests: small exchanges and snapshots in temporary
//! directories, made through `llmsim_tests::snapshot`.

use llmsim_snapshot::model::Exchange;
use serde_json::{Value, json};

/// A chat completion asking `prompt` and answering `answer`, as python3 recorded it
/// from `api.openai.com`.
#[expect(clippy::needless_pass_by_value, reason = "callers pass json! literals")]
pub fn exchange(prompt: &str, answer: Value) -> Exchange {
    llmsim_tests::snapshot::exchange(json!({
        "provider": "openai",
        "host": "api.openai.com",
        "scheme": "https",
        "process": {"pid": 1, "comm": "python3", "exe": null},
        "started_at": "2026-07-01T09:00:00Z",
        "ttfb_ms": 100.0,
        "duration_ms": 120.0,
        "model": "gpt-4o-mini",
        "request": {
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [["content-type", "application/json"]],
            "body": {"kind": "json", "json": chat(prompt)},
        },
        "response": {
            "status": 200,
            "headers": [["content-type", "application/json"]],
            "body": {"kind": "json", "json": answer},
        },
    }))
}

/// The request body of a chat completion asking `prompt`.
pub fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
}

/// A snapshot directory holding `exchanges`, in order.
pub fn snapshot(exchanges: &[Exchange]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    llmsim_tests::snapshot::write(dir.path(), exchanges.iter().cloned());
    dir
}
