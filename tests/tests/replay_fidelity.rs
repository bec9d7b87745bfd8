//! Byte-exact replay: a client that keeps the raw bytes of each answer is recorded by
//! `llmsim-agent capture` against the fake provider, which lays out JSON the way each real
//! provider does (`OpenAI` and Gemini indented with a final newline, Anthropic compact), then
//! replayed offline by `replayd -- CMD`. Every replayed body must be the recorded bytes, byte for
//! byte, while the snapshot keeps each body as readable JSON (Gemini's server-sent events, whose
//! lines end in CRLF, as events, and `OpenRouter`'s stream, whose SSE comment a client never
//! sees but replay still sends). Gemini's JSON-array stream
//! (`streamGenerateContent` without `alt=sse`) is stored with the offset of each element and
//! replayed element by element at those offsets.

mod capture_support;

use std::{process::Command, time::Duration};

use base64::Engine as _;
use capture_support::exchanges;
use llmsim_tests::{
    CommandOutput, FakeProvider, TestCa, TestNetns, configure_client_env, flows::replay_client,
    llmsim_agent, netns_client_argv, privileged, run_command,
};
use serde_json::Value;

const CLIENT: &str = "raw_bodies.py";
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(180);

/// The calls of `raw_bodies.py`, in order.
const CALLS: [&str; 8] = [
    "openai.chat",
    "openai.embeddings",
    "openai.error",
    "anthropic.messages",
    "gemini.generateContent",
    "gemini.streamGenerateContent",
    "gemini.streamGenerateContent.sse",
    "openrouter.chat.stream",
];

/// The index of the streamed JSON array in [`CALLS`].
const ARRAY_STREAM: usize = 5;

/// `(name, status, body bytes)` of each call the client reported.
fn bodies(output: &CommandOutput) -> Vec<(String, u64, Vec<u8>)> {
    let report = output.json();
    report["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in the client report\n{output}"))
        .iter()
        .map(|r| {
            let body = base64::engine::general_purpose::STANDARD
                .decode(r["body_b64"].as_str().expect("body_b64"))
                .expect("base64 body");
            (
                r["name"].as_str().expect("name").to_owned(),
                r["status"].as_u64().expect("status"),
                body,
            )
        })
        .collect()
}

/// When (ms after sending the request) each piece of call `index`'s body arrived.
fn reads_ms(output: &CommandOutput, index: usize) -> Vec<f64> {
    output.json()["results"][index]["reads_ms"]
        .as_array()
        .unwrap_or_else(|| panic!("no reads_ms for call {index}\n{output}"))
        .iter()
        .map(|t| t.as_f64().expect("a time"))
        .collect()
}

/// Checks that a streamed JSON array body is stored with the offset of each element (the
/// fake provider sends them 20 ms apart); returns the time from the first to the last.
fn element_spread(stream: &Value) -> f64 {
    let elements = stream["json"].as_array().expect("an array").len();
    let offsets: Vec<f64> = stream["offsets_ms"]
        .as_array()
        .unwrap_or_else(|| panic!("no element offsets: {stream:#}"))
        .iter()
        .map(|t| t.as_f64().expect("an offset"))
        .collect();
    assert!(elements >= 2, "a stream of one element: {stream:#}");
    assert_eq!(offsets.len(), elements, "{stream:#}");
    let spread = offsets[elements - 1] - offsets[0];
    assert!(
        spread >= 15.0,
        "elements were sent 20 ms apart: {offsets:?}"
    );
    spread
}

/// The snapshot keeps every body as JSON (or events) a person can read and edit, and
/// `OpenRouter`'s comment with the event it came before.
fn assert_stored_readably(files: &[Value]) {
    assert_eq!(files.len(), CALLS.len());
    for (file, name) in files.iter().zip(CALLS) {
        let kind = if matches!(
            name,
            "gemini.streamGenerateContent.sse" | "openrouter.chat.stream"
        ) {
            "sse"
        } else {
            "json"
        };
        assert_eq!(
            file["response"]["body"]["kind"], kind,
            "{name}: {}",
            file["response"]["body"]
        );
    }
    let first_event = &files[7]["response"]["body"]["events"][0];
    assert!(
        first_event["wire"]
            .as_str()
            .is_some_and(|wire| wire.starts_with(": OPENROUTER PROCESSING\n\ndata: {")),
        "{first_event}"
    );
}

#[test]
fn replayed_json_bodies_are_the_recorded_bytes() {
    if !privileged("byte-exact replay of JSON bodies") {
        return;
    }
    let snapshot = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture")
        .arg("--out")
        .arg(snapshot.path())
        .arg("--")
        .args(netns_client_argv(&netns, CLIENT));
    configure_client_env(&mut cmd, &ca);
    let output = run_command(cmd, "capture of raw_bodies.py", CAPTURE_TIMEOUT);
    output.assert_success();
    let recorded = bodies(&output);
    let served = provider.requests();
    assert_eq!(
        recorded
            .iter()
            .map(|(name, ..)| name.as_str())
            .collect::<Vec<_>>(),
        CALLS,
        "{output}"
    );
    assert_eq!(served.len(), CALLS.len(), "{output}");

    // The client received what the provider sent, laid out as that provider lays it out.
    for ((name, status, body), request) in recorded.iter().zip(&served) {
        assert_eq!(
            body.as_slice(),
            request.response_body.as_bytes(),
            "{name}: client and provider disagree on the bytes"
        );
        assert_eq!(*status, u64::from(request.status), "{name}");
        let text = std::str::from_utf8(body).expect("UTF-8 body");
        let (opening, ending) = match name.as_str() {
            "openai.error" => ("{\n    \"", "}\n"),
            "anthropic.messages" => ("{\"", "}"),
            "gemini.streamGenerateContent" => ("[{\n  \"", "}\n]"),
            "gemini.streamGenerateContent.sse" => ("data: {\"", "}\r\n\r\n"),
            "openrouter.chat.stream" => {
                (": OPENROUTER PROCESSING\n\ndata: {\"", "data: [DONE]\n\n")
            }
            _ => ("{\n  \"", "}\n"),
        };
        assert!(
            text.starts_with(opening) && text.ends_with(ending),
            "{name}: not laid out as the provider does: {text}"
        );
    }
    assert_eq!(recorded[2].1, 401, "the call without a key is refused");

    let files = exchanges(snapshot.path());
    assert_stored_readably(&files);
    let recorded_spread = element_spread(&files[ARRAY_STREAM]["response"]["body"]);

    let replay = replay_client(snapshot.path(), &["--repeat", "fail"], CLIENT, &[]);
    assert!(replay.status.success(), "replay failed:\n{replay}");
    assert!(
        replay.stderr.contains(&format!(
            "served {} requests (0 repeats), 0 misses",
            CALLS.len()
        )),
        "replay report:\n{replay}"
    );
    let replayed = bodies(&replay);
    assert_eq!(replayed.len(), recorded.len(), "{replay}");
    for ((name, status, body), (_, replayed_status, replayed_body)) in
        recorded.iter().zip(&replayed)
    {
        assert_eq!(replayed_status, status, "{name}: status");
        assert!(
            replayed_body == body,
            "{name}: replayed body differs from the recorded bytes\nrecorded: {}\nreplayed: {}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(replayed_body)
        );
    }
    // The array went out element by element at the recorded pace. Pieces never go out
    // early, so the last comes no sooner after the request than it did in the recording; a
    // late first piece can only shorten the gap between them, hence half of it is required.
    let reads = reads_ms(&replay, ARRAY_STREAM);
    assert!(
        reads.len() >= 2,
        "the streamed array arrived in one piece: {reads:?}\n{replay}"
    );
    let replayed_spread = reads[reads.len() - 1] - reads[0];
    assert!(
        replayed_spread >= recorded_spread / 2.0,
        "replayed over {replayed_spread:.1} ms, recorded over {recorded_spread:.1} ms: {reads:?}"
    );
}
