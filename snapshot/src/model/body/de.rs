//! Reading a [`Body`] without buffering it. The derived form of
//! `#[serde(tag = "kind")]` copies every body into serde's private content
//! tree and then walks that copy, which was most of the cost of loading a
//! snapshot. Files written by this crate put `kind` first, so it is read first
//! and the rest of the object goes straight into the fields of that kind; an
//! object with `kind` elsewhere (edited by hand) is put in that order first.

use std::fmt;

use serde::de::{self, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{Body, JsonStyle, NdjsonLine, SseEvent, base64_bytes};

const TAG: &str = "kind";

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(BodyVisitor)
    }
}

/// The values of `kind`.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Empty,
    Json,
    Text,
    Base64,
    Encoded,
    Sse,
    Ndjson,
}

// The fields of each kind, with the attributes of the matching variant of `Body`.

#[derive(Deserialize)]
struct EmptyFields {
    #[serde(default)]
    content_encoding: Option<String>,
}

#[derive(Deserialize)]
struct JsonFields {
    #[serde(default)]
    content_encoding: Option<String>,
    json: Value,
    #[serde(default)]
    style: JsonStyle,
    #[serde(default)]
    verbatim: Option<String>,
    #[serde(default)]
    offsets_ms: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct TextFields {
    #[serde(default)]
    content_encoding: Option<String>,
    text: String,
}

#[derive(Deserialize)]
struct Base64Fields {
    #[serde(default)]
    content_encoding: Option<String>,
    #[serde(with = "base64_bytes")]
    base64: Vec<u8>,
}

#[derive(Deserialize)]
struct EncodedFields {
    content_encoding: String,
    #[serde(with = "base64_bytes")]
    base64: Vec<u8>,
}

#[derive(Deserialize)]
struct SseFields {
    #[serde(default)]
    content_encoding: Option<String>,
    events: Vec<SseEvent>,
    #[serde(default)]
    unterminated: Option<String>,
    #[serde(default)]
    crlf: bool,
}

#[derive(Deserialize)]
struct NdjsonFields {
    #[serde(default)]
    content_encoding: Option<String>,
    lines: Vec<NdjsonLine>,
    #[serde(default)]
    style: JsonStyle,
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("internally tagged enum Body")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Err(de::Error::missing_field(TAG));
        };
        if first == TAG {
            let kind = map.next_value()?;
            return fields(kind, MapAccessDeserializer::new(map));
        }
        // `kind` comes later: read the whole object, then again with `kind` first.
        let mut rest = Map::new();
        rest.insert(first, map.next_value()?);
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            rest.insert(key, value);
        }
        let kind = rest
            .shift_remove(TAG)
            .ok_or_else(|| de::Error::missing_field(TAG))?;
        let mut ordered = Map::with_capacity(rest.len() + 1);
        ordered.insert(TAG.to_owned(), kind);
        ordered.extend(rest);
        Value::Object(ordered)
            .deserialize_map(Self)
            .map_err(de::Error::custom)
    }
}

/// The body of `kind` from the rest of its object.
fn fields<'de, D: Deserializer<'de>>(kind: Kind, rest: D) -> Result<Body, D::Error> {
    Ok(match kind {
        Kind::Empty => {
            let f = EmptyFields::deserialize(rest)?;
            Body::Empty {
                content_encoding: f.content_encoding,
            }
        }
        Kind::Json => {
            let f = JsonFields::deserialize(rest)?;
            let mut body = Body::Json {
                content_encoding: f.content_encoding,
                json: f.json,
                style: f.style,
                verbatim: f.verbatim,
                offsets_ms: f.offsets_ms,
            };
            // A document edited by hand is sent as edited.
            body.forget_stale_verbatim();
            body
        }
        Kind::Text => {
            let f = TextFields::deserialize(rest)?;
            Body::Text {
                content_encoding: f.content_encoding,
                text: f.text,
            }
        }
        Kind::Base64 => {
            let f = Base64Fields::deserialize(rest)?;
            Body::Base64 {
                content_encoding: f.content_encoding,
                base64: f.base64,
            }
        }
        Kind::Encoded => {
            let f = EncodedFields::deserialize(rest)?;
            Body::Encoded {
                content_encoding: f.content_encoding,
                base64: f.base64,
            }
        }
        Kind::Sse => {
            let f = SseFields::deserialize(rest)?;
            Body::Sse {
                content_encoding: f.content_encoding,
                events: f.events,
                unterminated: f.unterminated,
                crlf: f.crlf,
            }
        }
        Kind::Ndjson => {
            let f = NdjsonFields::deserialize(rest)?;
            Body::Ndjson {
                content_encoding: f.content_encoding,
                lines: f.lines,
                style: f.style,
            }
        }
    })
}
