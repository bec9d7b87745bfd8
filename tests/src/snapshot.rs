//! Snapshots made by hand, for tests and benchmarks that need a recording of something no
//! client was captured doing. The exchanges go through the snapshot's own writer, so the
//! files are named and written as capture writes them.

use std::path::{Path, PathBuf};

use llmsim_snapshot::{model::Exchange, store::SnapshotWriter};
use serde_json::{Value, json};

/// Writes `exchanges`, in order, into the snapshot in `dir` and returns their paths. Each
/// needs `request` and `response` and may set any other field of the format; the rest
/// take defaults: the `generic` provider on `127.0.0.1` over plain HTTP, 1 ms to the first
/// and last byte, complete, not streamed.
///
/// # Panics
/// When an exchange is not an object or not a valid exchange, or the snapshot cannot be
/// written.
pub fn write_exchanges(dir: &Path, exchanges: impl IntoIterator<Item = Value>) -> Vec<PathBuf> {
    let mut writer = SnapshotWriter::open(dir)
        .unwrap_or_else(|e| panic!("open the snapshot in {}: {e}", dir.display()));
    exchanges
        .into_iter()
        .map(|exchange| {
            let Value::Object(fields) = exchange else {
                panic!("an exchange is a JSON object: {exchange}");
            };
            let mut whole = json!({
                "format_version": 1,
                "seq": 0,
                "provider": "generic",
                "host": "127.0.0.1",
                "scheme": "http",
                "process": {"pid": 1, "comm": "test", "exe": null},
                "peer": null,
                "started_at": "2026-11-26T00:00:00Z",
                "ttfb_ms": 1.0,
                "duration_ms": 1.0,
                "incomplete": null,
                "streamed": false,
                "model": null,
            });
            if let Some(defaults) = whole.as_object_mut() {
                defaults.extend(fields);
            }
            let exchange: Exchange = serde_json::from_value(whole)
                .unwrap_or_else(|e| panic!("not a valid exchange: {e}"));
            writer
                .write(&exchange)
                .unwrap_or_else(|e| panic!("write an exchange into {}: {e}", dir.display()))
        })
        .collect()
}
