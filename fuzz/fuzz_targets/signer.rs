//! The canonical-JSON signer: equivalent JSON signs the same whatever its key order or
//! whitespace, and a body signs the same parsed or as bytes.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use llmsim_snapshot::signature::{Body, CompiledRules, MatchRules, Signature};
use serde_json::Value;

fn rules() -> &'static CompiledRules {
    static RULES: OnceLock<CompiledRules> = OnceLock::new();
    RULES.get_or_init(|| {
        MatchRules::default()
            .compile()
            .expect("default rules compile")
    })
}

/// The same document with every object's keys in reverse order.
fn reordered(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .rev()
                .map(|(k, v)| (k.clone(), reordered(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(reordered).collect()),
        other => other.clone(),
    }
}

fn sign(body: Body<'_>) -> Signature {
    Signature::of(
        "POST",
        "api.openai.com",
        "/v1/chat/completions",
        body,
        rules(),
    )
}

fuzz_target!(|data: &[u8]| {
    let as_bytes = sign(Body::Bytes(data));
    let Ok(json) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let parsed = sign(Body::Json(&json));
    assert_eq!(
        as_bytes.hex(),
        parsed.hex(),
        "bytes and parsed JSON sign differently"
    );
    let other_text = serde_json::to_vec_pretty(&reordered(&json)).expect("JSON serializes");
    let other = sign(Body::Bytes(&other_text));
    assert_eq!(
        parsed.hex(),
        other.hex(),
        "reordered, reindented JSON signs differently: {}",
        String::from_utf8_lossy(&other_text)
    );
});
