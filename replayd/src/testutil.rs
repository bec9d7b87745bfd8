//! Builders shared by the unit tests: small exchanges and snapshots in temporary
//! directories.

use llmsim_snapshot::model::{Exchange, FORMAT_VERSION};
use llmsim_snapshot::store::SnapshotWriter;
use serde_json::{Value, json};

/// A chat completion asking `prompt` and answering `answer`. Built from JSON, as a file
/// would be, so fields the model gains later keep their defaults.
#[expect(clippy::needless_pass_by_value, reason = "callers pass json! literals")]
pub fn exchange(prompt: &str, answer: Value) -> Exchange {
    serde_json::from_value(json!({
        "format_version": FORMAT_VERSION,
        "seq": 0,
        "provider": "openai",
        "host": "api.openai.com",
        "scheme": "https",
        "process": {"pid": 1, "comm": "python3", "exe": null},
        "peer": null,
        "started_at": "2026-07-01T09:00:00Z",
        "ttfb_ms": 100.0,
        "duration_ms": 120.0,
        "incomplete": null,
        "streamed": false,
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
    .unwrap()
}

/// The request body of a chat completion asking `prompt`.
pub fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
}

/// A snapshot directory holding `exchanges`, in order.
pub fn snapshot(exchanges: &[Exchange]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    for ex in exchanges {
        writer.write(ex).unwrap();
    }
    dir
}
