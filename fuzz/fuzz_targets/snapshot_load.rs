//! The snapshot loader: any bytes as an exchange file load or give a typed `StoreError`,
//! never a panic; what loads can be signed and replayed.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use llmsim_snapshot::signature::{Body, MatchRules, Signature};
use llmsim_snapshot::store;

/// One snapshot directory for the whole run (its exchange file is rewritten per input).
fn snapshot_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory").keep();
        std::fs::create_dir(dir.join("exchanges")).expect("exchanges directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = snapshot_dir();
    std::fs::write(
        dir.join("exchanges/000001-openai-post-v1-chat-completions.json"),
        data,
    )
    .expect("writing the exchange file");
    let Ok(snapshot) = store::load(dir) else {
        return;
    };
    let rules = MatchRules::default()
        .compile()
        .expect("default rules compile");
    for recorded in &snapshot.exchanges {
        let exchange = &recorded.exchange;
        let request = &exchange.request;
        let body = request.body.to_bytes();
        let _ = Signature::of(
            &request.method,
            "api.openai.com",
            &request.path,
            Body::Bytes(&body),
            &rules,
        );
        let _ = exchange.response.body.to_bytes();
        let _ = exchange.response.body.sse_events();
        let _ = exchange.response.body.json_stream();
    }
});
