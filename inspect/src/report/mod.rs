//! `llmsim-agent report`: what a recording cost and how fast it was answered,
//! per provider and model, from the snapshot crate's cost ledger. This module
//! loads the snapshot and prices it; [`table`] renders the terminal table,
//! [`html`] the self-contained HTML page, and `--json` is the ledger's serde
//! form.

pub mod html;
pub mod table;

use std::path::{Path, PathBuf};

use llmsim_snapshot::ledger::Ledger;
use llmsim_snapshot::prices::{PriceError, PriceTable};
use llmsim_snapshot::store::{self, StoreError};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The snapshot directory could not be loaded.
    #[error("cannot load snapshot {dir}")]
    Load {
        /// The snapshot directory.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<StoreError>,
    },
    /// The `--prices` file could not be loaded.
    #[error("cannot load prices")]
    Prices {
        /// What went wrong.
        #[source]
        source: Box<PriceError>,
    },
    /// The ledger could not be written as JSON.
    #[error("cannot write the report as JSON")]
    Json {
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The HTML page could not be written.
    #[error("cannot write {path}")]
    WriteHtml {
        /// The HTML file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Loads `dir` and prices it with the built-in table plus `prices_file`.
pub fn load_ledger(dir: &Path, prices_file: Option<&Path>) -> Result<Ledger, ReportError> {
    let prices = PriceTable::load(prices_file).map_err(|source| ReportError::Prices {
        source: Box::new(source),
    })?;
    let snapshot = store::load(dir).map_err(|source| ReportError::Load {
        dir: dir.to_owned(),
        source: Box::new(source),
    })?;
    Ok(Ledger::build(
        snapshot.exchanges.iter().map(|r| &r.exchange),
        &prices,
    ))
}

/// The ledger as pretty-printed JSON, with a trailing newline.
pub fn to_json(ledger: &Ledger) -> Result<String, ReportError> {
    let mut text =
        serde_json::to_string_pretty(ledger).map_err(|source| ReportError::Json { source })?;
    text.push('\n');
    Ok(text)
}

/// Writes the HTML page for `ledger` to `path`; `title` names the snapshot.
pub fn write_html(ledger: &Ledger, title: &str, path: &Path) -> Result<(), ReportError> {
    std::fs::write(path, html::render(ledger, title)).map_err(|source| ReportError::WriteHtml {
        path: path.to_owned(),
        source,
    })
}

/// A duration for people: `812ms`, `1.24s`, `-` when unknown.
pub fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 1000.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{:.2}s", ms / 1000.0),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use llmsim_snapshot::model::{Exchange, FORMAT_VERSION};
    use llmsim_snapshot::store::SnapshotWriter;
    use serde_json::{Value, json};

    use super::*;

    /// An exchange from its JSON form, so tests do not depend on every field
    /// of the model.
    pub(crate) fn exchange(
        provider_host: &str,
        path: &str,
        request: &Value,
        status: u16,
        response_body: &Value,
        started: &str,
        timing: (f64, f64),
    ) -> Exchange {
        let provider = llmsim_snapshot::provider::Provider::from_host(provider_host);
        serde_json::from_value(json!({
            "format_version": FORMAT_VERSION,
            "seq": 0,
            "provider": provider,
            "host": provider_host,
            "scheme": "https",
            "process": {"pid": 7, "comm": "python3", "exe": null},
            "peer": "127.0.0.1:443",
            "started_at": started,
            "ttfb_ms": timing.0,
            "duration_ms": timing.1,
            "incomplete": null,
            "streamed": response_body.get("kind") == Some(&json!("sse")),
            "model": request.get("model"),
            "request": {"method": "POST", "path": path,
                "headers": [["host", provider_host], ["content-type", "application/json"], ["authorization", "Bearer <redacted:0badc0de>"]],
                "body": {"kind": "json", "json": request}},
            "response": {"status": status, "headers": [["content-type", "application/json"]], "body": response_body}
        }))
        .expect("a valid exchange")
    }

    /// A small mixed snapshot: `OpenAI` chat, a streamed Anthropic call, a
    /// Gemini call, an unpriced local model and a failed call.
    pub(crate) fn sample_exchanges() -> Vec<Exchange> {
        let chat = |model: &str, input: u64, output: u64| {
            json!({"kind": "json", "json": {"object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi <b>&</b>"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": input, "completion_tokens": output, "prompt_tokens_details": {"cached_tokens": 2}}}})
        };
        let anthropic_stream = json!({"kind": "sse", "events": [
            {"offset_ms": 300.0, "event": "message_start", "data": "{\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5-20250929\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}"},
            {"offset_ms": 350.0, "event": "content_block_delta", "data": "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}"},
            {"offset_ms": 900.0, "event": "message_delta", "data": "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":25}}"}
        ]});
        let gemini = json!({"kind": "json", "json": {"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3}, "modelVersion": "gemini-2.5-flash"}});
        vec![
            exchange(
                "api.openai.com",
                "/v1/chat/completions",
                &json!({"model": "gpt-4o-mini"}),
                200,
                &chat("gpt-4o-mini-2024-07-18", 20, 10),
                "2026-07-01T09:00:00Z",
                (150.0, 200.0),
            ),
            exchange(
                "api.openai.com",
                "/v1/chat/completions",
                &json!({"model": "gpt-4o-mini"}),
                200,
                &chat("gpt-4o-mini-2024-07-18", 30, 5),
                "2026-07-01T09:00:01Z",
                (250.0, 400.0),
            ),
            exchange(
                "api.anthropic.com",
                "/v1/messages",
                &json!({"model": "claude-sonnet-4-5", "stream": true}),
                200,
                &anthropic_stream,
                "2026-07-01T09:00:01.5Z",
                (300.0, 950.0),
            ),
            exchange(
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.5-flash:generateContent",
                &json!({}),
                200,
                &gemini,
                "2026-07-01T09:00:02Z",
                (500.0, 510.0),
            ),
            exchange(
                "localhost",
                "/v1/chat/completions",
                &json!({"model": "llama3:8b"}),
                200,
                &chat("llama3:8b", 7, 7),
                "2026-07-01T09:00:03Z",
                (20.0, 90.0),
            ),
            exchange(
                "api.openai.com",
                "/v1/chat/completions",
                &json!({"model": "gpt-4o"}),
                429,
                &json!({"kind": "json", "json": {"error": {"message": "Rate limit"}}}),
                "2026-07-01T09:00:04Z",
                (30.0, 31.0),
            ),
        ]
    }

    /// Writes `exchanges` as a snapshot in a new temporary directory.
    pub(crate) fn snapshot_dir(exchanges: &[Exchange]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SnapshotWriter::open(dir.path()).unwrap();
        for exchange in exchanges {
            writer.write(exchange).unwrap();
        }
        dir
    }

    #[test]
    fn ledger_json_and_prices_override() {
        let dir = snapshot_dir(&sample_exchanges());
        let ledger = load_ledger(dir.path(), None).unwrap();
        assert_eq!(ledger.total.totals.calls, 6);
        assert_eq!(ledger.total.totals.failed, 1);
        assert_eq!(ledger.total.totals.unpriced, 1, "llama3 has no price");
        let json: Value = serde_json::from_str(&to_json(&ledger).unwrap()).unwrap();
        assert_eq!(
            json["total"]["usage"]["input_tokens"],
            20 + 30 + 40 + 12 + 7
        );
        assert_eq!(json["groups"].as_array().unwrap().len(), 5);

        let prices = dir.path().join("prices.toml");
        std::fs::write(&prices, "as_of = 2026-07-01\n[[model]]\nprovider = \"generic\"\nmodel = \"llama3\"\ninput = 1.0\noutput = 1.0\n").unwrap();
        let ledger = load_ledger(dir.path(), Some(&prices)).unwrap();
        assert_eq!(ledger.total.totals.unpriced, 0);
        assert!(matches!(
            load_ledger(dir.path(), Some(&dir.path().join("nope.toml"))),
            Err(ReportError::Prices { .. })
        ));
        assert!(matches!(
            load_ledger(&dir.path().join("missing"), None),
            Err(ReportError::Load { .. })
        ));
    }

    #[test]
    fn millis_are_readable() {
        assert_eq!(millis(None), "-");
        assert_eq!(millis(Some(812.4)), "812ms");
        assert_eq!(millis(Some(1_240.0)), "1.24s");
    }
}
