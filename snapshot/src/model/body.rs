//! Message bodies as stored: decoded from their Content-Encoding and kept in the
//! most readable form that loses nothing (JSON, text, SSE events, or base64 as
//! a last resort), plus the way back to wire bytes.

mod de;
mod json_stream;
mod ndjson;
mod style;

pub use ndjson::NdjsonLine;
pub use style::JsonStyle;

use serde::Serialize;
use serde_json::Value;

use super::encoding::{self, DecodeError};
use super::sse::{self, SseEvent};

/// A stored message body. Serialized with a `kind` tag; every kind records the
/// Content-Encoding the stored form was decoded from, when there was one.
/// Deserialized by hand (in `de`), to the same form.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Body {
    /// No body bytes.
    Empty {
        /// The Content-Encoding header of the (empty) body, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_encoding: Option<String>,
    },
    /// A JSON content type whose bytes parsed as JSON; stored as the value
    /// itself so a diff shows the change, with what it takes to write the
    /// same bytes back.
    Json {
        /// The Content-Encoding the body was decoded from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_encoding: Option<String>,
        /// The parsed document, object key order kept.
        json: Value,
        /// The layout the document had on the wire; absent for compact.
        #[serde(default, skip_serializing_if = "JsonStyle::is_compact")]
        style: JsonStyle,
        /// The body text exactly as recorded, kept only when no [`JsonStyle`]
        /// writes `json` back to the same bytes. Replay sends it while it
        /// still parses to `json`; once `json` is changed (by hand, or by
        /// redaction) it is dropped and `json` is written in `style`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verbatim: Option<String>,
        /// For a JSON array that arrived element by element (Gemini's
        /// `streamGenerateContent` without `alt=sse`): when each element
        /// arrived, in ms since request start, in element order. Replay sends
        /// each element at its offset, like SSE events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offsets_ms: Option<Vec<f64>>,
    },
    /// Any other body that is valid UTF-8.
    Text {
        /// The Content-Encoding the body was decoded from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_encoding: Option<String>,
        /// The body text.
        text: String,
    },
    /// Binary bytes, stored as standard base64.
    Base64 {
        /// The Content-Encoding the body was decoded from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_encoding: Option<String>,
        /// The decoded body bytes.
        #[serde(with = "base64_bytes")]
        base64: Vec<u8>,
    },
    /// Bytes still in a Content-Encoding this crate cannot undo (or that failed
    /// to decode); replay must send them with that Content-Encoding.
    Encoded {
        /// The Content-Encoding the bytes are still in.
        content_encoding: String,
        /// The bytes as they were on the wire.
        #[serde(with = "base64_bytes")]
        base64: Vec<u8>,
    },
    /// A `text/event-stream` body, as the events a client saw.
    Sse {
        /// The Content-Encoding the stream was decoded from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_encoding: Option<String>,
        /// Dispatched events in arrival order.
        events: Vec<SseEvent>,
        /// Bytes after the last event that no blank line ended (a stream cut
        /// short), replayed verbatim after the events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unterminated: Option<String>,
        /// The stream's lines ended in CRLF (Gemini's do), and replay ends
        /// them so; absent for LF.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        crlf: bool,
    },
    /// An `application/x-ndjson` body (Ollama's streams): one JSON document per
    /// line, each with when it arrived.
    Ndjson {
        /// The Content-Encoding the stream was decoded from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_encoding: Option<String>,
        /// The lines in arrival order.
        lines: Vec<NdjsonLine>,
        /// The layout of every line, its newline included.
        #[serde(default, skip_serializing_if = "JsonStyle::is_compact")]
        style: JsonStyle,
    },
}

impl Body {
    /// Builds a body from wire bytes that arrived in `segments`, each stamped
    /// with its arrival time in ms since request start.
    ///
    /// Undoes `content_encoding` (an unknown coding gives [`Body::Encoded`]),
    /// then picks the kind from `content_type` and the bytes: SSE for
    /// `text/event-stream`, NDJSON for `application/x-ndjson` whose lines one
    /// layout writes back, JSON for `application/json` and `*+json` when the
    /// bytes parse, text for UTF-8, base64 otherwise.
    pub fn from_http<B: AsRef<[u8]>>(
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        segments: &[(f64, B)],
    ) -> Result<Self, DecodeError> {
        let coding = encoding::normalize(content_encoding);
        let Some(decoded) = encoding::decode(content_encoding, segments)? else {
            let raw: Vec<u8> = segments
                .iter()
                .flat_map(|(_, b)| b.as_ref().iter().copied())
                .collect();
            return Ok(Self::raw(content_encoding, raw));
        };
        let bytes: Vec<u8> = decoded
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        if bytes.is_empty() {
            return Ok(Self::Empty {
                content_encoding: coding,
            });
        }
        let media = media_type(content_type);
        let text = std::str::from_utf8(&bytes).ok();
        if media == "text/event-stream" && text.is_some() {
            let parsed = sse::parse(&decoded);
            return Ok(Self::Sse {
                content_encoding: coding,
                events: parsed.events,
                unterminated: parsed.unterminated,
                crlf: parsed.crlf,
            });
        }
        if media == "application/x-ndjson"
            && let Some((lines, style)) = ndjson::parse(&bytes, &decoded)
        {
            return Ok(Self::Ndjson {
                content_encoding: coding,
                lines,
                style,
            });
        }
        if (media == "application/json" || media.ends_with("+json"))
            && let Ok(json) = serde_json::from_slice::<Value>(&bytes)
        {
            let (style, verbatim) = match JsonStyle::infer(&json, &bytes) {
                Some(style) => (style, None),
                None => (JsonStyle::default(), text.map(str::to_owned)),
            };
            let offsets_ms = if json.is_array() {
                json_stream::element_offsets(&bytes, &decoded)
            } else {
                None
            };
            return Ok(Self::Json {
                content_encoding: coding,
                json,
                style,
                verbatim,
                offsets_ms,
            });
        }
        Ok(match text {
            Some(text) => Self::Text {
                content_encoding: coding,
                text: text.to_owned(),
            },
            None => Self::Base64 {
                content_encoding: coding,
                base64: bytes,
            },
        })
    }

    /// Keeps wire bytes as they are: [`Body::Encoded`] when a Content-Encoding
    /// is named, [`Body::Base64`] (or [`Body::Empty`]) otherwise. The agent's
    /// fallback when [`Body::from_http`] fails on a truncated body.
    /// [`Body::from_http`] for storage, which must lose nothing: a body that
    /// cannot be decoded is kept as its bytes, and the reason comes back so
    /// the exchange can be flagged with it.
    pub fn for_storage<B: AsRef<[u8]>>(
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        segments: &[(f64, B)],
    ) -> (Self, Option<DecodeError>) {
        match Self::from_http(content_type, content_encoding, segments) {
            Ok(body) => (body, None),
            Err(error) => {
                let bytes = segments
                    .iter()
                    .flat_map(|(_, b)| b.as_ref().iter().copied())
                    .collect();
                (Self::raw(content_encoding, bytes), Some(error))
            }
        }
    }

    pub fn raw(content_encoding: Option<&str>, bytes: Vec<u8>) -> Self {
        let content_encoding = encoding::normalize(content_encoding);
        if bytes.is_empty() {
            return Self::Empty { content_encoding };
        }
        match content_encoding {
            Some(content_encoding) => Self::Encoded {
                content_encoding,
                base64: bytes,
            },
            None => Self::Base64 {
                content_encoding: None,
                base64: bytes,
            },
        }
    }

    /// The body bytes as replay sends them: decoded (except for
    /// [`Body::Encoded`]), JSON as recorded (its verbatim text, or the
    /// document in its style), SSE as `event:`/`data:` lines.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Empty { .. } => Vec::new(),
            Self::Json {
                verbatim: Some(text),
                ..
            }
            | Self::Text { text, .. } => text.as_bytes().to_vec(),
            Self::Json { json, style, .. } => style.write(json),
            Self::Base64 { base64, .. } | Self::Encoded { base64, .. } => base64.clone(),
            Self::Sse {
                events,
                unterminated,
                crlf,
                ..
            } => sse::write(events, unterminated.as_deref(), *crlf),
            Self::Ndjson { lines, style, .. } => lines
                .iter()
                .flat_map(|line| style.write(&line.json))
                .collect(),
        }
    }

    /// The Content-Encoding recorded with the body: what it was decoded from,
    /// or for [`Body::Encoded`] what it is still in.
    pub fn content_encoding(&self) -> Option<&str> {
        match self {
            Self::Empty { content_encoding }
            | Self::Json {
                content_encoding, ..
            }
            | Self::Text {
                content_encoding, ..
            }
            | Self::Base64 {
                content_encoding, ..
            }
            | Self::Sse {
                content_encoding, ..
            }
            | Self::Ndjson {
                content_encoding, ..
            } => content_encoding.as_deref(),
            Self::Encoded {
                content_encoding, ..
            } => Some(content_encoding),
        }
    }

    /// The Content-Encoding that [`Body::to_bytes`] is in: `None` except for
    /// [`Body::Encoded`]. Replay sets (or drops) the header to match.
    pub fn wire_content_encoding(&self) -> Option<&str> {
        match self {
            Self::Encoded {
                content_encoding, ..
            } => Some(content_encoding),
            _ => None,
        }
    }

    /// The events of an SSE body, for replay pacing.
    pub fn sse_events(&self) -> Option<&[SseEvent]> {
        match self {
            Self::Sse { events, .. } => Some(events),
            _ => None,
        }
    }

    /// A JSON array recorded as it streamed in, or an NDJSON body: its wire
    /// bytes cut into the pieces that carried each element (each line), each
    /// with the offset (ms since request start) at which replay sends it.
    pub fn json_stream(&self) -> Option<Vec<(f64, Vec<u8>)>> {
        match self {
            Self::Json {
                offsets_ms: Some(offsets),
                ..
            } => Some(json_stream::pieces(&self.to_bytes(), offsets)),
            Self::Ndjson { lines, style, .. } => Some(
                lines
                    .iter()
                    .map(|line| (line.offset_ms, style.write(&line.json)))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The document of a JSON body.
    pub fn json(&self) -> Option<&Value> {
        match self {
            Self::Json { json, .. } => Some(json),
            _ => None,
        }
    }

    /// A JSON body holding `json` with no recorded layout: written compact.
    pub fn compact_json(json: Value) -> Self {
        Self::Json {
            content_encoding: None,
            json,
            style: JsonStyle::default(),
            verbatim: None,
            offsets_ms: None,
        }
    }

    /// Drops the verbatim text of a JSON body once it no longer parses to
    /// the stored document (the document was edited), so that replay sends
    /// the document as it now is.
    pub fn forget_stale_verbatim(&mut self) {
        if let Self::Json { json, verbatim, .. } = self
            && verbatim
                .as_deref()
                .is_some_and(|text| serde_json::from_str::<Value>(text).ok().as_ref() != Some(json))
        {
            *verbatim = None;
        }
    }

    /// Whether the body has no bytes.
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Empty { .. })
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::Empty {
            content_encoding: None,
        }
    }
}

/// The media type without parameters, lowercased: `application/json`.
fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Standard base64 with padding, as a JSON string.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::encoding::tests::compress;
    use base64::Engine as _;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn whole(ct: Option<&str>, ce: Option<&str>, bytes: &[u8]) -> Body {
        Body::from_http(ct, ce, &[(0.0, bytes)]).unwrap()
    }

    #[test]
    fn json_content_types_become_json() {
        let body = br#"{"b":1,"a":[true,null,"x"]}"#;
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
        ] {
            let parsed = whole(Some(ct), None, body);
            assert_eq!(
                parsed.json(),
                Some(&json!({"b": 1, "a": [true, null, "x"]})),
                "{ct}"
            );
            assert_eq!(parsed.to_bytes(), body, "{ct}: compact and key order kept");
        }
    }

    #[test]
    fn indented_json_keeps_its_layout_and_replays_byte_for_byte() {
        let wire = "{\n  \"id\": \"chatcmpl-1\",\n  \"choices\": [],\n  \"n\": 1.5\n}\n";
        let body = whole(Some("application/json"), None, wire.as_bytes());
        assert_eq!(
            body.json(),
            Some(&json!({"id": "chatcmpl-1", "choices": [], "n": 1.5}))
        );
        let stored = serde_json::to_value(&body).unwrap();
        assert_eq!(stored["style"], json!({"indent": 2, "newline": true}));
        assert!(stored.get("verbatim").is_none(), "{stored}");
        let loaded: Body = serde_json::from_value(stored).unwrap();
        assert_eq!(loaded.to_bytes(), wire.as_bytes());
    }

    #[test]
    fn json_no_style_reproduces_is_kept_verbatim_beside_the_document() {
        let wire = b"{\"a\": 1e-05,\n\"b\":[ ]}";
        let body = whole(Some("application/json"), None, wire);
        assert_eq!(body.json(), Some(&json!({"a": 1e-05, "b": []})));
        let text = serde_json::to_string(&body).unwrap();
        let loaded: Body = serde_json::from_str(&text).unwrap();
        assert_eq!(loaded, body);
        assert_eq!(loaded.to_bytes(), wire);
    }

    #[test]
    fn long_floats_replay_their_recorded_bytes_after_storing() {
        // Found by the content_decoding fuzz target: unless floats are read back exactly, the
        // stored document loads as a neighbouring value and replays other digits.
        for wire in [
            &b"{\"a\":122222222.22224112}"[..],
            b"{\"a\":6.6888886681111106e+97}",
        ] {
            let body = whole(Some("application/json"), None, wire);
            let text = serde_json::to_string(&body).unwrap();
            let loaded: Body = serde_json::from_str(&text).unwrap();
            assert_eq!(loaded.to_bytes(), wire, "stored as {text}");
        }
    }

    #[test]
    fn an_edited_document_is_served_as_edited_in_its_style() {
        // Verbatim text that no longer parses to the document is dropped on load.
        let edited = r#"{"kind":"json","json":{"a":2},"verbatim":"{\"a\": 1e-05}"}"#;
        let body: Body = serde_json::from_str(edited).unwrap();
        assert_eq!(body.to_bytes(), br#"{"a":2}"#);
        let wire = "{\n  \"a\": 1\n}\n";
        let mut stored =
            serde_json::to_value(whole(Some("application/json"), None, wire.as_bytes())).unwrap();
        stored["json"]["a"] = json!("changed");
        let body: Body = serde_json::from_value(stored).unwrap();
        assert_eq!(body.to_bytes(), b"{\n  \"a\": \"changed\"\n}\n");
        // A document changed in memory (redaction) drops its verbatim text too.
        let mut body = whole(Some("application/json"), None, br#"{"k": "sk-secret" }"#);
        if let Body::Json { json, .. } = &mut body {
            json["k"] = json!("<redacted>");
        }
        body.forget_stale_verbatim();
        assert_eq!(body.to_bytes(), br#"{"k":"<redacted>"}"#);
    }

    #[test]
    fn a_body_stored_without_a_style_replays_compact() {
        let old = r#"{"kind":"json","json":{"a":[1, 2]}}"#;
        let body: Body = serde_json::from_str(old).unwrap();
        assert_eq!(body.to_bytes(), br#"{"a":[1,2]}"#);
    }

    #[test]
    fn unparseable_json_falls_back_to_text_then_base64() {
        let text = whole(Some("application/json"), None, b"{not json");
        assert_eq!(
            text,
            Body::Text {
                content_encoding: None,
                text: "{not json".into()
            }
        );
        let binary = [0xff, 0x00, 0xfe];
        let b = whole(Some("application/json"), None, &binary);
        assert!(matches!(&b, Body::Base64 { base64, .. } if base64 == &binary));
        assert_eq!(b.to_bytes(), binary);
    }

    #[test]
    fn text_without_json_type_stays_text_even_if_it_parses() {
        let b = whole(Some("text/plain"), None, b"{\"a\":1}");
        assert!(matches!(b, Body::Text { .. }));
        let b = whole(None, None, b"plain");
        assert_eq!(b.to_bytes(), b"plain");
    }

    #[test]
    fn empty_bytes_are_empty() {
        assert_eq!(whole(Some("application/json"), None, b""), Body::default());
        let no_segments: &[(f64, Vec<u8>)] = &[];
        assert!(Body::from_http(None, None, no_segments).unwrap().is_empty());
        assert_eq!(
            whole(None, Some("gzip"), b"").content_encoding(),
            Some("gzip")
        );
    }

    #[test]
    fn compressed_json_is_decoded_and_remembers_its_coding() {
        let raw = br#"{"id":"x"}"#;
        for coding in ["gzip", "br", "zstd"] {
            let b = whole(
                Some("application/json"),
                Some(coding),
                &compress(coding, raw),
            );
            assert_eq!(b.json(), Some(&json!({"id": "x"})), "{coding}");
            assert_eq!(b.content_encoding(), Some(coding));
            assert_eq!(b.wire_content_encoding(), None);
            assert_eq!(b.to_bytes(), raw);
        }
    }

    #[test]
    fn unknown_coding_keeps_raw_bytes_and_name() {
        let b = whole(Some("application/json"), Some("compress"), b"\x1f\x9d\x90");
        assert_eq!(
            b,
            Body::Encoded {
                content_encoding: "compress".into(),
                base64: b"\x1f\x9d\x90".to_vec()
            }
        );
        assert_eq!(b.wire_content_encoding(), Some("compress"));
        assert_eq!(b.to_bytes(), b"\x1f\x9d\x90");
    }

    #[test]
    fn sse_events_get_the_offset_of_their_segment() {
        let segments: Vec<(f64, Vec<u8>)> = vec![
            (10.0, b"event: a\ndata: {\"n\":1}\n\nda".to_vec()),
            (25.5, b"ta: [DONE]\n\n".to_vec()),
        ];
        let b = Body::from_http(Some("text/event-stream; charset=utf-8"), None, &segments).unwrap();
        let events = b.sse_events().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].offset_ms, events[0].event.as_deref()),
            (10.0, Some("a"))
        );
        assert_eq!(
            (events[1].offset_ms, events[1].data.as_str()),
            (25.5, "[DONE]")
        );
        assert_eq!(
            b.to_bytes(),
            b"event: a\ndata: {\"n\":1}\n\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn gzip_sse_keeps_per_segment_offsets() {
        let wire = compress("gzip", b"data: one\n\ndata: two\n\n");
        let (a, b) = wire.split_at(wire.len() - 2);
        let body = Body::from_http(
            Some("text/event-stream"),
            Some("gzip"),
            &[(1.0, a), (2.0, b)],
        );
        let body = body.unwrap();
        let events = body.sse_events().unwrap();
        assert_eq!(
            events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!(body.content_encoding(), Some("gzip"));
    }

    #[test]
    fn crlf_event_streams_replay_with_crlf() {
        let wire = b"data: {\"n\":1}\r\n\r\ndata: {\"n\":2}\r\n\r\n";
        let body = whole(Some("text/event-stream"), None, wire);
        assert!(matches!(body, Body::Sse { crlf: true, .. }), "{body:?}");
        assert_eq!(body.to_bytes(), wire);
        let stored = serde_json::to_value(&body).unwrap();
        assert_eq!(stored["crlf"], true);
        assert_eq!(serde_json::from_value::<Body>(stored).unwrap(), body);
        let lf = whole(Some("text/event-stream"), None, b"data: x\n\n");
        assert!(matches!(lf, Body::Sse { crlf: false, .. }));
        assert!(serde_json::to_value(&lf).unwrap().get("crlf").is_none());
    }

    #[test]
    fn non_utf8_event_stream_is_base64() {
        let b = whole(Some("text/event-stream"), None, b"data: \xff\n\n");
        assert!(matches!(b, Body::Base64 { .. }));
    }

    #[test]
    fn serde_form_is_tagged_and_readable() {
        let b = whole(Some("application/json"), None, br#"{"a":1}"#);
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({"kind": "json", "json": {"a": 1}})
        );
        let b = Body::raw(None, vec![0, 1, 2]);
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v, json!({"kind": "base64", "base64": b64(&[0, 1, 2])}));
        assert_eq!(serde_json::from_value::<Body>(v).unwrap(), b);
        let b = whole(Some("text/event-stream"), Some("identity"), b"data: x\n\n");
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({"kind": "sse", "events": [{"offset_ms": 0.0, "data": "x"}]})
        );
        assert_eq!(
            serde_json::to_value(Body::default()).unwrap(),
            json!({"kind": "empty"})
        );
    }

    #[test]
    fn invalid_base64_is_a_load_error() {
        let err = serde_json::from_str::<Body>(r#"{"kind":"base64","base64":"!!"}"#).unwrap_err();
        assert!(err.to_string().contains("Invalid"), "{err}");
    }

    #[test]
    fn every_kind_reads_back_in_any_key_order() {
        let event = SseEvent {
            offset_ms: 1.5,
            event: Some("delta".into()),
            data: "x".into(),
            id: None,
            retry: Some(10),
            wire: None,
        };
        let bodies = [
            Body::default(),
            Body::Empty {
                content_encoding: Some("gzip".into()),
            },
            whole(
                Some("application/json"),
                Some("gzip"),
                &compress("gzip", b"[1,null]"),
            ),
            whole(Some("text/plain"), None, b"plain"),
            Body::raw(None, vec![0, 1, 2]),
            Body::raw(Some("compress"), vec![3, 4]),
            Body::Sse {
                content_encoding: None,
                events: vec![event.clone()],
                unterminated: Some("data: cut".into()),
                crlf: false,
            },
            Body::Sse {
                content_encoding: None,
                events: vec![event],
                unterminated: None,
                crlf: true,
            },
        ];
        for body in bodies {
            let text = serde_json::to_string(&body).unwrap();
            assert_eq!(serde_json::from_str::<Body>(&text).unwrap(), body, "{text}");
            // The same object with `kind` last, as a hand edit might leave it.
            let Value::Object(mut map) = serde_json::to_value(&body).unwrap() else {
                panic!("{text} is not an object");
            };
            let kind = map.shift_remove("kind").unwrap();
            map.insert("kind".into(), kind);
            let reordered = Value::Object(map).to_string();
            assert_eq!(
                serde_json::from_str::<Body>(&reordered).unwrap(),
                body,
                "{reordered}"
            );
        }
    }

    #[test]
    fn a_missing_or_unknown_kind_is_a_load_error() {
        for (text, want) in [
            (r#"{"json":{}}"#, "missing field `kind`"),
            ("{}", "missing field `kind`"),
            (r#"{"kind":"xml"}"#, "unknown variant `xml`"),
            (r#"{"text":"x","kind":"xml"}"#, "unknown variant `xml`"),
            (r#"{"kind":"json"}"#, "missing field `json`"),
            (
                r#"{"kind":"encoded","base64":""}"#,
                "missing field `content_encoding`",
            ),
            (r#""json""#, "expected internally tagged enum Body"),
        ] {
            let err = serde_json::from_str::<Body>(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
