//! The redactor's promise: no key pattern it knows (`sk-…`, `sk-ant-…`, `xai-…`, `AIza…`,
//! Bearer tokens, `?key=`) survives redaction. A key-shaped secret (letters and digits, as
//! real keys are) is planted in arbitrary text, which is then carried in a body of each
//! kind, a header value or a request path; after redaction neither the stored form nor
//! the bytes replay would send may still contain it.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use llmsim_snapshot::config::RedactRules;
use llmsim_snapshot::model::{Body, Headers};
use llmsim_snapshot::redact::Redactor;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// What may stand right before or after a planted key.
const DELIMITERS: &[u8] = b" \"=:\n,'\t";
const CONTENT_TYPES: [&str; 4] = [
    "application/json",
    "text/event-stream",
    "application/x-ndjson",
    "text/plain",
];

fn redactor() -> &'static Redactor {
    static REDACTOR: OnceLock<Redactor> = OnceLock::new();
    REDACTOR.get_or_init(|| {
        Redactor::new(&RedactRules::default(), [7; 32]).expect("default rules compile")
    })
}

/// `len` characters of key alphabet from `bytes` (cycled), with at least one letter and
/// one digit, as the redactor only takes random-looking matches for keys.
fn random_part(bytes: &[u8], len: usize) -> String {
    let pick = |i: usize| {
        let b = bytes.get(i % bytes.len().max(1)).copied().unwrap_or(0);
        ALPHABET[usize::from(b) % ALPHABET.len()]
    };
    let mut out: Vec<u8> = (0..len).map(pick).collect();
    out[0] = b'a' + out[0] % 26;
    out[len - 1] = b'0' + out[len - 1] % 10;
    String::from_utf8(out).expect("ASCII")
}

/// The secret and the text it is written as: `Bearer <token>` carries the token.
fn planted(kind: u8, bytes: &[u8]) -> (String, String) {
    let len = 20 + usize::from(bytes.first().copied().unwrap_or(0) % 40);
    let key = match kind % 5 {
        0 => format!("sk-{}", random_part(bytes, len)),
        1 => format!("sk-ant-api03-{}", random_part(bytes, len)),
        2 => format!("xai-{}", random_part(bytes, len)),
        3 => format!("AIza{}", random_part(bytes, 35)),
        _ => {
            let token = random_part(bytes, len);
            return (token.clone(), format!("Bearer {token}"));
        }
    };
    (key.clone(), key)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[kind, at, before, after, carrier], rest)) = data.split_first_chunk::<5>() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (secret, written) = planted(kind, rest);
    // Only the planted occurrence is sure to be a key: elsewhere the same characters may
    // follow a letter, which by design is not a key.
    if text.contains(&secret) {
        return;
    }
    // Plant it at a character boundary of the text, between two delimiters.
    let mut at = usize::from(at).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let delimiter = |b: u8| char::from(DELIMITERS[usize::from(b) % DELIMITERS.len()]);
    let text = format!(
        "{}{}{written}{}{}",
        &text[..at],
        delimiter(before),
        delimiter(after),
        &text[at..]
    );
    let redactor = redactor();
    match carrier % 7 {
        0..4 => {
            let content_type = CONTENT_TYPES[usize::from(carrier % 4)];
            let (mut body, _) =
                Body::for_storage(Some(content_type), None, &[(0.0, text.as_bytes())]);
            redactor.redact_body(&mut body);
            let stored = serde_json::to_string(&body).expect("a body always serializes");
            let replayed = body.to_bytes();
            assert!(
                !stored.contains(&secret),
                "{secret} survived in the stored body {stored}"
            );
            assert!(
                !replayed
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{secret} survived in the replayed body {}",
                String::from_utf8_lossy(&replayed)
            );
        }
        4 => {
            let mut headers = Headers(vec![("x-note".to_owned(), text.clone())]);
            redactor.redact_headers(&mut headers);
            let value = &headers.0[0].1;
            assert!(
                !value.contains(&secret),
                "{secret} survived in the header {value:?}"
            );
        }
        5 => {
            // A key in a query value; Bearer tokens do not travel in paths.
            if kind % 5 == 4 {
                return;
            }
            let safe: String = rest
                .iter()
                .map(|&b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
                .collect();
            let path = format!("/v1/{safe}?q={secret}");
            let redacted = redactor.redact_path(&path);
            assert!(
                !redacted.contains(&secret),
                "{secret} survived in the path {redacted}"
            );
        }
        _ => {
            // `?key=` holds a secret whatever its shape.
            let path = format!("/v1beta/models/gemini:generateContent?alt=sse&key={secret}");
            let redacted = redactor.redact_path(&path);
            assert!(
                !redacted.contains(&secret),
                "{secret} survived in the path {redacted}"
            );
        }
    }
});
