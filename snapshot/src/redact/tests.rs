use serde_json::json;

use super::*;
use crate::model::tests::sample_exchange;
use crate::model::{Body, SseEvent};

const OPENAI_KEY: &str = "sk-proj-Ab3dEf6hIj9kLmN0pQrStUvWxYz_12-34567890abcdEFGH";
const ANTHROPIC_KEY: &str = "sk-ant-api03-Zy9xW8vU7tS6rQ5pO4nM3lK2jI1hG0fEdCbA-_aBcDeFgH";
const GOOGLE_KEY: &str = "AIzaSyD3x4mPl3K3yF0rT3st1ngPurp0s3sXYZ1";
const XAI_KEY: &str = "xai-9fKq2LmZ8xWv4TbN7rYc3HdJ6sPa1GuE5oQi0";
const KEY: [u8; 32] = [7; 32];

fn redactor() -> Redactor {
    Redactor::new(&RedactRules::default(), KEY).unwrap()
}

fn is_placeholder(s: &str) -> bool {
    s.len() == "<redacted:12345678>".len()
        && s.starts_with("<redacted:")
        && s.ends_with('>')
        && s[10..18].bytes().all(|b| b.is_ascii_hexdigit())
}

fn serialized(exchange: &Exchange) -> String {
    serde_json::to_string_pretty(exchange).unwrap()
}

#[test]
fn the_google_key_fixture_has_the_real_length() {
    assert_eq!(GOOGLE_KEY.len(), 39);
}

#[test]
fn placeholder_is_the_keyed_hmac() {
    let r = redactor();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).unwrap();
    mac.update(b"secret");
    let expected = hex::encode(&mac.finalize().into_bytes()[..4]);
    assert_eq!(r.placeholder(b"secret"), format!("<redacted:{expected}>"));
    assert!(is_placeholder(&r.placeholder(b"")));
}

#[test]
fn same_secret_same_placeholder_different_secrets_differ() {
    let r = redactor();
    assert_eq!(
        r.placeholder(OPENAI_KEY.as_bytes()),
        r.placeholder(OPENAI_KEY.as_bytes())
    );
    assert_ne!(
        r.placeholder(OPENAI_KEY.as_bytes()),
        r.placeholder(ANTHROPIC_KEY.as_bytes())
    );
    let other_machine = Redactor::new(&RedactRules::default(), [8; 32]).unwrap();
    assert_ne!(
        r.placeholder(OPENAI_KEY.as_bytes()),
        other_machine.placeholder(OPENAI_KEY.as_bytes())
    );
}

#[test]
fn every_listed_header_is_redacted() {
    let r = redactor();
    let mut names: Vec<String> = SECRET_HEADERS.iter().map(|s| s.to_uppercase()).collect();
    names.extend(
        [
            "x-custom-token",
            "X-Client-Secret",
            "x-portkey-api-key",
            "idempotency-key",
        ]
        .map(String::from),
    );
    let mut headers: Headers = names
        .iter()
        .map(|n| (n.clone(), "hunter2-value".to_owned()))
        .collect();
    r.redact_headers(&mut headers);
    for (name, value) in headers.iter() {
        assert!(!value.contains("hunter2"), "{name}: {value}");
        let placeholder = value.rsplit(' ').next().unwrap();
        assert!(is_placeholder(placeholder), "{name}: {value}");
    }
}

#[test]
fn ordinary_and_rate_limit_headers_are_kept() {
    let r = redactor();
    let original: Headers = [
        ("content-type", "application/json"),
        ("x-ratelimit-remaining-tokens", "149984"),
        ("anthropic-ratelimit-input-tokens-limit", "400000"),
        ("keep-alive", "timeout=5"),
        ("x-request-id", "req_123"),
    ]
    .into_iter()
    .collect();
    let mut headers = original.clone();
    r.redact_headers(&mut headers);
    assert_eq!(headers, original);
}

#[test]
fn authorization_keeps_its_scheme_and_matches_the_body_placeholder() {
    let r = redactor();
    let mut headers: Headers = [
        ("Authorization", format!("Bearer {OPENAI_KEY}")),
        ("x-api-key", ANTHROPIC_KEY.to_owned()),
        ("proxy-authorization", "Basic dXNlcjpwYXNz".to_owned()),
    ]
    .into_iter()
    .collect();
    r.redact_headers(&mut headers);
    let openai = r.placeholder(OPENAI_KEY.as_bytes());
    assert_eq!(
        headers.get("authorization"),
        Some(format!("Bearer {openai}").as_str())
    );
    assert_eq!(
        headers.get("x-api-key"),
        Some(r.placeholder(ANTHROPIC_KEY.as_bytes()).as_str())
    );
    assert!(
        headers
            .get("proxy-authorization")
            .unwrap()
            .starts_with("Basic <redacted:")
    );
    assert_eq!(
        r.scrub_text(&format!("key {OPENAI_KEY} here")),
        Some(format!("key {openai} here"))
    );
}

#[test]
fn keys_are_scrubbed_from_other_header_values() {
    let r = redactor();
    let mut headers: Headers = [("x-forwarded-auth", format!("bearer {XAI_KEY}"))]
        .into_iter()
        .collect();
    r.redact_headers(&mut headers);
    assert!(!headers.get("x-forwarded-auth").unwrap().contains(XAI_KEY));
}

#[test]
fn a_bearer_token_followed_by_another_after_an_equals_sign_loses_both() {
    // Found by the redactor fuzz target: the first token used to run on through `=Bearer`,
    // so the second token was never seen as one.
    let r = redactor();
    let second = "w5Obce9IVXMK11J5c4GpJ0RJ6IGeNJ0N0GXM5";
    let mut headers: Headers = [("x-note", format!("Bearer odb44a9~=Bearer {second},"))]
        .into_iter()
        .collect();
    r.redact_headers(&mut headers);
    let value = headers.get("x-note").unwrap();
    assert!(!value.contains(second), "{value}");
    assert!(!value.contains("odb44a9~"), "{value}");
    // Base64 padding stays part of the token it ends.
    let padded = r.scrub_text("Bearer QWxhZGRpbjpvcGVuc2VzYW1l==").unwrap();
    assert!(!padded.contains('='), "{padded}");
}

#[test]
fn key_query_parameter_is_redacted() {
    let r = redactor();
    let path = format!(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key={GOOGLE_KEY}&x=1"
    );
    let redacted = r.redact_path(&path);
    assert_eq!(
        redacted,
        format!(
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key={}&x=1",
            r.placeholder(GOOGLE_KEY.as_bytes())
        )
    );
    assert_eq!(
        r.redact_path("/v1/models?KEY=abc"),
        format!("/v1/models?KEY={}", r.placeholder(b"abc"))
    );
    assert_eq!(
        r.redact_path("/v1/models?key=&keyword=x"),
        "/v1/models?key=&keyword=x"
    );
    assert_eq!(
        r.redact_path("/v1/chat/completions"),
        "/v1/chat/completions"
    );
}

#[test]
fn planted_keys_are_gone_from_the_serialized_exchange() {
    let r = redactor();
    let mut ex = sample_exchange();
    ex.request.path = format!("/v1/chat/completions?key={GOOGLE_KEY}");
    ex.request
        .headers
        .0
        .push(("authorization".into(), format!("Bearer {OPENAI_KEY}")));
    ex.request.body = Body::Json {
        content_encoding: None,
        style: crate::model::JsonStyle::default(),
        verbatim: None,
        offsets_ms: None,
        json: json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": format!("my key is {ANTHROPIC_KEY}, ok?")}],
            "metadata": {"nested": [format!("Bearer {XAI_KEY}")]},
        }),
    };
    ex.response
        .headers
        .0
        .push(("set-cookie".into(), "session=abc123; Path=/".into()));
    ex.response.body = Body::Sse {
        content_encoding: None,
        crlf: false,
        events: vec![
            SseEvent {
                offset_ms: 1.0,
                event: Some("delta".into()),
                data: format!("{{\"text\":\"{OPENAI_KEY}\"}}"),
                id: None,
                retry: None,
                wire: None,
            },
            SseEvent {
                offset_ms: 2.0,
                event: None,
                data: "[DONE]".into(),
                id: None,
                retry: None,
                wire: None,
            },
        ],
        unterminated: Some(format!("data: {GOOGLE_KEY}")),
    };
    let before = serialized(&ex);
    for secret in [
        OPENAI_KEY,
        ANTHROPIC_KEY,
        GOOGLE_KEY,
        XAI_KEY,
        "session=abc123",
    ] {
        assert!(before.contains(secret), "fixture lacks {secret}");
    }
    r.redact_exchange(&mut ex);
    let after = serialized(&ex);
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, GOOGLE_KEY, XAI_KEY, "abc123"] {
        assert!(!after.contains(secret), "{secret} survived:\n{after}");
    }
    assert!(after.contains(&r.placeholder(OPENAI_KEY.as_bytes())));
    // What is not secret is untouched.
    assert_eq!(ex.request.body.json().unwrap()["model"], "gpt-4o-mini");
    assert_eq!(ex.response.body.sse_events().unwrap()[1].data, "[DONE]");
}

#[test]
fn redacting_twice_changes_nothing() {
    let rules = RedactRules {
        json_pointers: vec!["/user".into()],
        ..RedactRules::default()
    };
    let r = Redactor::new(&rules, KEY).unwrap();
    let mut ex = sample_exchange();
    ex.request.path = format!("/v1beta/models/m:generateContent?key={GOOGLE_KEY}");
    ex.request
        .headers
        .0
        .push(("authorization".into(), format!("Bearer {OPENAI_KEY}")));
    ex.request.headers.0.push(("cookie".into(), "a=b".into()));
    ex.request.body = Body::Json {
        content_encoding: None,
        style: crate::model::JsonStyle::default(),
        verbatim: None,
        offsets_ms: None,
        json: json!({"user": "alice", "text": ANTHROPIC_KEY}),
    };
    r.redact_exchange(&mut ex);
    let once = ex.clone();
    r.redact_exchange(&mut ex);
    assert_eq!(ex, once);
}

#[test]
fn keys_in_text_and_binary_bodies_are_scrubbed() {
    let r = redactor();
    let mut text = Body::Text {
        content_encoding: None,
        text: format!("x={ANTHROPIC_KEY}\n"),
    };
    r.redact_body(&mut text);
    assert_eq!(
        text.to_bytes(),
        format!("x={}\n", r.placeholder(ANTHROPIC_KEY.as_bytes())).into_bytes()
    );

    let mut wire = vec![0xff, 0x00];
    wire.extend_from_slice(OPENAI_KEY.as_bytes());
    let mut binary = Body::raw(None, wire);
    r.redact_body(&mut binary);
    let bytes = binary.to_bytes();
    assert!(
        !bytes
            .windows(OPENAI_KEY.len())
            .any(|w| w == OPENAI_KEY.as_bytes())
    );
    assert_eq!(&bytes[..2], [0xff, 0x00]);
}

#[test]
fn a_key_in_an_event_kept_as_it_arrived_is_gone_and_the_comments_stay() {
    let r = redactor();
    let wire = format!(": OPENROUTER PROCESSING\n\ndata:{{\"echo\":\"{OPENAI_KEY}\"}}\n\n");
    let (mut body, _) =
        Body::for_storage(Some("text/event-stream"), None, &[(0.0, wire.as_bytes())]);
    r.redact_body(&mut body);
    let stored = serde_json::to_string(&body).unwrap();
    assert!(!stored.contains(OPENAI_KEY), "{stored}");
    let replayed = String::from_utf8(body.to_bytes()).unwrap();
    assert!(!replayed.contains(OPENAI_KEY), "{replayed}");
    assert!(
        replayed.starts_with(": OPENROUTER PROCESSING\n\ndata:{\"echo\":\"<redacted:"),
        "the event keeps its bytes, the key replaced: {replayed}"
    );
}

#[test]
fn prose_that_merely_resembles_a_key_survives() {
    let r = redactor();
    for prose in [
        "use sk-learn-compatible-estimators-and-pipelines here",
        "the bearer of-bad-news arrived",
        "a task-manager-with-very-long-descriptive-name-123",
        "AIza is a prefix",
    ] {
        assert_eq!(r.scrub_text(prose), None, "{prose}");
    }
}

#[test]
fn rules_add_headers_query_params_pointers_and_patterns() {
    let rules = RedactRules {
        headers: vec!["X-Team".into()],
        query_params: vec!["sig".into()],
        json_pointers: vec![
            "/user".into(),
            "/metadata/ids/1".into(),
            "/missing".into(),
            "/nothing".into(),
        ],
        patterns: vec![r"acct_([0-9]+)".into(), r"tok_[a-z]+".into()],
    };
    let r = Redactor::new(&rules, KEY).unwrap();
    let mut headers: Headers = [("x-team", "blue")].into_iter().collect();
    r.redact_headers(&mut headers);
    assert_eq!(headers.get("x-team"), Some(r.placeholder(b"blue").as_str()));
    assert_eq!(
        r.redact_path("/x?sig=abc&a=b"),
        format!("/x?sig={}&a=b", r.placeholder(b"abc"))
    );

    let mut body = Body::Json {
        content_encoding: None,
        style: crate::model::JsonStyle::default(),
        verbatim: None,
        offsets_ms: None,
        json: json!({"user": "alice", "metadata": {"ids": [1, {"n": 2}]}, "nothing": null, "note": "acct_42 tok_abc"}),
    };
    r.redact_body(&mut body);
    let json = body.json().unwrap();
    assert_eq!(json["user"], r.placeholder(b"alice"));
    assert_eq!(json["metadata"]["ids"][1], r.placeholder(br#"{"n":2}"#));
    assert_eq!(json["metadata"]["ids"][0], 1);
    assert!(json["nothing"].is_null());
    assert_eq!(
        json["note"],
        format!(
            "acct_{} {}",
            r.placeholder(b"42"),
            r.placeholder(b"tok_abc")
        )
    );
}

#[test]
fn bad_rules_are_errors() {
    let bad_pattern = RedactRules {
        patterns: vec!["(".into()],
        ..RedactRules::default()
    };
    assert!(
        matches!(Redactor::new(&bad_pattern, KEY), Err(RedactError::Pattern { pattern, .. }) if pattern == "(")
    );
    let bad_pointer = RedactRules {
        json_pointers: vec!["user".into()],
        ..RedactRules::default()
    };
    assert!(matches!(
        Redactor::new(&bad_pointer, KEY),
        Err(RedactError::JsonPointer { .. })
    ));
}

#[test]
fn debug_output_hides_the_key() {
    let text = format!("{:?}", redactor());
    assert!(text.starts_with("Redactor"), "{text}");
    assert!(!text.contains("7, 7"), "{text}");
}

/// Found by the `redactor` fuzz target: a key used as a JSON member name survived.
#[test]
fn a_key_as_a_json_member_name_is_scrubbed_in_place() {
    let r = redactor();
    let mut body = Body::Json {
        content_encoding: None,
        style: crate::model::JsonStyle::default(),
        verbatim: None,
        offsets_ms: None,
        json: json!({"a": 1, XAI_KEY: {OPENAI_KEY: "x"}, "z": 2}),
    };
    r.redact_body(&mut body);
    let stored = serde_json::to_string(&body).unwrap();
    assert!(
        !stored.contains(XAI_KEY) && !stored.contains(OPENAI_KEY),
        "{stored}"
    );
    let xai = r.placeholder(XAI_KEY.as_bytes());
    let openai = r.placeholder(OPENAI_KEY.as_bytes());
    let json = body.json().unwrap();
    let names: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(names, ["a", xai.as_str(), "z"], "member order is kept");
    assert_eq!(json[&xai][&openai], "x");
}
