//! Snapshots made by hand, for tests and benchmarks that need a recording of something no
//! client was captured doing. Exchanges are built by [`exchange`], the one envelope with
//! defaults, and go through the snapshot's own writer, so the files are named and written
//! as capture writes them.

use std::path::{Path, PathBuf};

pub use llmsim_snapshot::fixtures::exchange;
use llmsim_snapshot::model::{Exchange, Headers, is_hop_by_hop};
use llmsim_snapshot::store::SnapshotWriter;
use serde_json::{Value, json};

/// Writes `exchanges`, in order, into the snapshot in `dir` and returns their paths. Each
/// is made by [`exchange`]: it needs `request` and `response` and may set any other field
/// of the format; the rest take defaults.
///
/// # Panics
/// When an exchange is not an object or not a valid exchange, or the snapshot cannot be
/// written.
pub fn write_exchanges(dir: &Path, exchanges: impl IntoIterator<Item = Value>) -> Vec<PathBuf> {
    write(dir, exchanges.into_iter().map(exchange))
}

/// Writes `exchanges`, in order, into the snapshot in `dir` and returns their paths.
///
/// # Panics
/// When the snapshot cannot be written.
pub fn write(dir: &Path, exchanges: impl IntoIterator<Item = Exchange>) -> Vec<PathBuf> {
    let mut writer = SnapshotWriter::open(dir)
        .unwrap_or_else(|e| panic!("open the snapshot in {}: {e}", dir.display()));
    exchanges
        .into_iter()
        .map(|exchange| {
            writer
                .write(&exchange)
                .unwrap_or_else(|e| panic!("write an exchange into {}: {e}", dir.display()))
        })
        .collect()
}

/// A snapshot holding one recorded `GET /v1/models` on api.openai.com, and its answer: the
/// smallest recording a client can be served from.
///
/// # Panics
/// When the temporary directory or the snapshot cannot be written.
pub fn openai_models() -> (tempfile::TempDir, Value) {
    let snapshot = tempfile::tempdir().expect("tempdir");
    let answer = json!({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]});
    write_exchanges(
        snapshot.path(),
        [json!({
            "provider": "openai", "host": "api.openai.com", "scheme": "https",
            "request": {"method": "GET", "path": "/v1/models", "headers": [], "body": {"kind": "empty"}},
            "response": {"status": 200, "headers": [["content-type", "application/json"]],
                         "body": {"kind": "json", "json": answer}}
        })],
    );
    (snapshot, answer)
}

/// The exchange files of the snapshot at `dir`, in name order; none when it has no
/// `exchanges/` directory.
pub fn exchange_paths(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("exchanges"))
        .map(|entries| {
            entries
                .map(|e| e.expect("a directory entry").path())
                .collect()
        })
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    files
}

/// `headers` but the hop-by-hop ones and those named in `dropped` (lower case), as
/// name-value pairs: what a server standing in for a recorded one sends of them.
pub fn end_to_end(headers: &Headers, dropped: &[&str]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !is_hop_by_hop(&lower) && !dropped.contains(&lower.as_str())
        })
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}
