//! How a JSON body was laid out on the wire, so that replay writes the stored
//! document back as the same bytes: one line (compact, or Python's default
//! `", "` / `": "` spacing) or indented by N spaces, non-ASCII characters raw
//! or escaped, with or without a final newline. [`JsonStyle::infer`] finds the
//! style of recorded bytes and checks that writing the parsed document in it
//! gives those bytes back exactly.

use std::fmt::Write as _;
use std::io;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter, Serializer};

/// The layout of a JSON body. The default (every field absent) is compact
/// JSON on one line, which is what bodies recorded without a style get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JsonStyle {
    /// Spaces per nesting level, one value per line (`": "` after keys);
    /// 0 writes the document on one line.
    #[serde(skip_serializing_if = "is_zero")]
    pub indent: u8,
    /// On one line, a space after each `,` and `:` (Python's `json.dumps`
    /// default); ignored when `indent` is set.
    #[serde(skip_serializing_if = "is_false")]
    pub spaced: bool,
    /// Every non-ASCII character written as a `\uXXXX` escape (lowercase hex,
    /// surrogate pairs above U+FFFF), as Python's `ensure_ascii` does.
    #[serde(skip_serializing_if = "is_false")]
    pub ascii: bool,
    /// A newline after the document.
    #[serde(skip_serializing_if = "is_false")]
    pub newline: bool,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u8) -> bool {
    *n == 0
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl JsonStyle {
    /// Whether this is the default, compact style.
    pub fn is_compact(&self) -> bool {
        *self == Self::default()
    }

    /// The style in which `json` serializes to exactly `bytes` (the bytes it
    /// was parsed from), or `None` when no style reproduces them (numbers
    /// written differently, escapes a serializer would not choose, irregular
    /// whitespace).
    pub fn infer(json: &Value, bytes: &[u8]) -> Option<Self> {
        let (body, newline) = match bytes.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (bytes, false),
        };
        let indent = match body {
            [b'{' | b'[', b'\n', rest @ ..] => {
                u8::try_from(rest.iter().take_while(|&&b| b == b' ').count()).ok()?
            }
            _ => 0,
        };
        let candidates: &[bool] = if indent == 0 {
            &[false, true]
        } else {
            &[false]
        };
        for &spaced in candidates {
            let mut style = Self {
                indent,
                spaced,
                ascii: false,
                newline,
            };
            let written = style.write(json);
            if written == bytes {
                return Some(style);
            }
            if bytes.is_ascii() && !written.is_ascii() {
                style.ascii = true;
                if style.write(json) == bytes {
                    return Some(style);
                }
            }
        }
        None
    }

    /// `json` written in this style.
    pub fn write(&self, json: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let written = if self.indent > 0 {
            let indent = vec![b' '; usize::from(self.indent)];
            json.serialize(&mut Serializer::with_formatter(
                &mut out,
                PrettyFormatter::with_indent(&indent),
            ))
        } else if self.spaced {
            json.serialize(&mut Serializer::with_formatter(&mut out, Spaced))
        } else {
            json.serialize(&mut Serializer::with_formatter(&mut out, CompactFormatter))
        };
        written.expect("a JSON value always serializes to memory");
        if self.ascii && !out.is_ascii() {
            out = escape_non_ascii(&out);
        }
        if self.newline {
            out.push(b'\n');
        }
        out
    }
}

/// Rewrites every non-ASCII character of serialized JSON as `\uXXXX`. Such
/// characters only occur inside strings, where the escape means the same.
fn escape_non_ascii(json: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(json);
    let mut out = String::with_capacity(json.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(out, "\\u{unit:04x}").expect("writing to a String cannot fail");
            }
        }
    }
    out.into_bytes()
}

/// One line with a space after each `,` and `:`.
struct Spaced;

impl Spaced {
    /// `, ` before every array element and object member but the first.
    fn separate<W: ?Sized + io::Write>(writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
}

impl Formatter for Spaced {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        Self::separate(writer, first)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        Self::separate(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) -> Option<JsonStyle> {
        let json: Value = serde_json::from_slice(bytes).unwrap();
        let style = JsonStyle::infer(&json, bytes)?;
        assert_eq!(
            style.write(&json),
            bytes,
            "{}",
            String::from_utf8_lossy(bytes)
        );
        Some(style)
    }

    #[test]
    fn the_layouts_providers_use_are_reproduced() {
        let compact = br#"{"a":[1,{"b":null}],"c":"\u00e9","d":{},"e":[]}"#;
        assert_eq!(
            round_trip(compact),
            Some(JsonStyle {
                ascii: true,
                ..JsonStyle::default()
            })
        );
        assert!(
            round_trip(r#"{"a":[1,{"b":null}],"c":"é"}"#.as_bytes())
                .unwrap()
                .is_compact()
        );
        let openai = "{\n  \"id\": \"x\",\n  \"choices\": [\n    {\n      \"annotations\": [],\n      \"c\": \"é\"\n    }\n  ],\n  \"o\": {}\n}\n";
        assert_eq!(
            round_trip(openai.as_bytes()),
            Some(JsonStyle {
                indent: 2,
                newline: true,
                ..JsonStyle::default()
            })
        );
        let four = "{\n    \"error\": {\n        \"code\": null\n    }\n}\n";
        assert_eq!(round_trip(four.as_bytes()).map(|s| s.indent), Some(4));
        let python = r#"{"a": [1, 2], "b": "caf\u00e9 \ud83d\ude00"}"#;
        assert_eq!(
            round_trip(python.as_bytes()),
            Some(JsonStyle {
                spaced: true,
                ascii: true,
                ..JsonStyle::default()
            })
        );
        assert_eq!(round_trip(b"[1]\n").map(|s| s.newline), Some(true));
    }

    #[test]
    fn irregular_bytes_have_no_style() {
        for bytes in [
            &b"{ \"a\":1}"[..],
            b"{\"a\":1e-05}",
            b"{\"a\":1}\r\n",
            b"{\n\t\"a\": 1\n}",
            b"{\"a\":\"\\/\"}",
        ] {
            assert_eq!(
                round_trip(bytes),
                None,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn the_compact_style_serializes_as_nothing() {
        assert_eq!(serde_json::to_string(&JsonStyle::default()).unwrap(), "{}");
        let style = JsonStyle {
            indent: 2,
            newline: true,
            ..JsonStyle::default()
        };
        let text = serde_json::to_string(&style).unwrap();
        assert_eq!(text, r#"{"indent":2,"newline":true}"#);
        assert_eq!(serde_json::from_str::<JsonStyle>(&text).unwrap(), style);
    }
}
