//! Exchanges made by hand, for tests and benchmarks that need a recording of
//! something no client was captured doing. This module owns the one envelope
//! such exchanges share: the fields of the format that a test does not care
//! about, with fixed defaults. Built with the `fixtures` feature (and in this
//! crate's own tests); `llmsim_tests::snapshot` writes such exchanges into
//! snapshots.

use serde_json::{Value, json};

use crate::model::{Exchange, FORMAT_VERSION};

/// An exchange from `fields`, a JSON object in the exchange file format. It needs
/// `request` and `response` and may set any other field; the rest take defaults:
/// this build's format version, `seq` 0, the `generic` provider on `127.0.0.1`
/// over plain HTTP, process 1 (`test`), started `2026-11-26T00:00:00Z`, 1 ms to
/// the first and last byte, complete, not streamed, no model and no summary.
/// Built from JSON, as a file would be, so fields the format gains later keep
/// their defaults.
///
/// # Panics
/// When `fields` is not an object or does not make a valid exchange.
pub fn exchange(fields: Value) -> Exchange {
    let Value::Object(fields) = fields else {
        panic!("an exchange is a JSON object: {fields}");
    };
    let mut whole = json!({
        "format_version": FORMAT_VERSION,
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
    serde_json::from_value(whole).unwrap_or_else(|e| panic!("not a valid exchange: {e}"))
}
