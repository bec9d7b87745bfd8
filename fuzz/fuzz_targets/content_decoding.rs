//! Content decoding and the choice of body kind: the first byte picks the Content-Type and
//! Content-Encoding (gzip, deflate, br, zstd, stacked codings, none), the rest is the body.
//! Corrupt data is a typed error and the bytes are kept; without a coding, the body replays
//! as recorded (see `llmsim_fuzz::check_body`).

#![no_main]

use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/problem+json"),
    Some("text/event-stream"),
    Some("application/x-ndjson"),
    Some("text/plain"),
    Some("application/octet-stream"),
];

const CODINGS: [Option<&str>; 8] = [
    None,
    Some("gzip"),
    Some("deflate"),
    Some("br"),
    Some("zstd"),
    Some("gzip, br"),
    Some("identity"),
    Some("x-unknown"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(pick & 7)];
    let coding = CODINGS[usize::from((pick >> 3) & 7)];
    llmsim_fuzz::check_body(content_type, coding, pick >> 6, bytes);
});
