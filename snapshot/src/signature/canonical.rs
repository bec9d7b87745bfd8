//! The canonical form of a request ([`CanonicalRequest`]) and the one-pass emitter of
//! a body's canonical JSON text: keys sorted, numbers normalised, ignored fields
//! dropped, masked patterns replaced and tool-call ids renamed by order of first
//! appearance. Also the unambiguous texts that a [`Signature`](super::Signature) hashes.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use regex::NoExpand;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use super::rules::{CompiledRules, MASKED};
use super::trie::PointerTrie;

/// Object fields whose string values are tool-call ids when they look like ids.
const TOOL_ID_FIELDS: &[&str] = &["tool_call_id", "tool_use_id", "call_id"];
/// Prefixes that mark a string as a tool-call id wherever it appears.
const TOOL_ID_PREFIXES: &[&str] = &["call_", "toolu_"];
/// `type` values of objects whose `id` is a tool-call id.
const TOOL_OBJECT_TYPES: &[&str] = &[
    "function",
    "function_call",
    "function_call_output",
    "tool_use",
    "tool_result",
    "server_tool_use",
    "custom_tool_call",
];

/// A request body as handed to [`Signature::of`](super::Signature::of).
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    /// No body.
    Empty,
    /// A parsed JSON body.
    Json(&'a Value),
    /// Body bytes: JSON when they parse as JSON, otherwise hashed as they are. Empty
    /// bytes are [`Body::Empty`].
    Bytes(&'a [u8]),
}

/// The canonical body of a [`CanonicalRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanonicalBody {
    /// No body.
    Empty,
    /// A JSON body after the rules, as compact JSON text: keys sorted, numbers
    /// normalised, fields ignored, patterns masked and tool-call ids renamed.
    /// [`CanonicalBody::to_value`] parses it back.
    Json(String),
    /// A body that is not JSON.
    Raw {
        /// Its length in bytes.
        len: usize,
        /// Its SHA-256, hex.
        sha256: String,
    },
}

impl CanonicalBody {
    /// The body as a JSON value for diffs: a JSON body parsed back, a raw body as a
    /// `"<N bytes, sha256 …>"` string, and `None` for no body.
    pub fn to_value(&self) -> Option<Value> {
        match self {
            Self::Empty => None,
            Self::Json(text) => {
                Some(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())))
            }
            Self::Raw { len, sha256 } => {
                Some(Value::String(format!("<{len} bytes, sha256 {sha256}>")))
            }
        }
    }
}

/// The canonical form of a request, kept next to its digest for diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalRequest {
    /// The method, upper case.
    pub method: String,
    /// The host, lower case, without a trailing dot.
    pub host: String,
    /// The path, with the model wildcarded under
    /// [`MatchRules::wildcard_model`](super::MatchRules::wildcard_model).
    pub path: String,
    /// The kept query parameters, sorted.
    pub query: Vec<(String, String)>,
    /// The kept headers (lower-case names), sorted.
    pub headers: Vec<(String, String)>,
    /// The canonical body.
    pub body: CanonicalBody,
}

impl CanonicalRequest {
    /// The unambiguous text of the whole request, which
    /// [`Signature::hex`](super::Signature::hex) hashes: the JSON array `[method, host,
    /// path, [[k, v], …] (query), [[k, v], …] (headers), body]`.
    pub(super) fn hashed_text(&self) -> String {
        self.text(Some(&self.host))
    }

    /// The same text without the host, `[method, path, query, headers, body]`, which the
    /// digest a [`Signature`](super::Signature) is looked up by hashes: the same request
    /// addressed to another host (`--listen`'s own address, then each recorded host) is a
    /// lookup with another host, not another digest.
    pub(super) fn host_free_text(&self) -> String {
        self.text(None)
    }

    /// The text of [`Self::hashed_text`], with the host element only when `host` is given;
    /// written directly rather than through a `Value`, as every request is signed.
    fn text(&self, host: Option<&str>) -> String {
        let pairs = |text: &mut String, list: &[(String, String)]| {
            text.push_str(",[");
            for (i, (k, v)) in list.iter().enumerate() {
                text.push_str(if i == 0 { "[" } else { ",[" });
                write_json_str(text, k);
                text.push(',');
                write_json_str(text, v);
                text.push(']');
            }
            text.push(']');
        };
        let body_len = match &self.body {
            CanonicalBody::Json(json) => json.len(),
            CanonicalBody::Empty | CanonicalBody::Raw { .. } => 80,
        };
        let mut text = String::with_capacity(128 + self.path.len() + body_len);
        text.push('[');
        write_json_str(&mut text, &self.method);
        text.push(',');
        if let Some(host) = host {
            write_json_str(&mut text, host);
            text.push(',');
        }
        write_json_str(&mut text, &self.path);
        pairs(&mut text, &self.query);
        pairs(&mut text, &self.headers);
        // The body element closes the array; the JSON body text is spliced in as is.
        match &self.body {
            CanonicalBody::Empty => text.push_str(",[\"empty\"]]"),
            CanonicalBody::Json(json) => {
                text.push_str(",[\"json\",");
                text.push_str(json);
                text.push_str("]]");
            }
            CanonicalBody::Raw { len, sha256 } => {
                // Writing to a String cannot fail.
                let _ = write!(text, ",[\"raw\",{len},\"{sha256}\"]]");
            }
        }
        text
    }
}

impl fmt::Display for CanonicalRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}{}", self.method, self.host, self.path)?;
        for (i, (k, v)) in self.query.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        for (k, v) in &self.headers {
            write!(f, " [{k}: {v}]")?;
        }
        match &self.body {
            CanonicalBody::Empty => Ok(()),
            CanonicalBody::Json(text) => write!(f, " {text}"),
            CanonicalBody::Raw { len, sha256 } => write!(f, " <{len} bytes, sha256 {sha256}>"),
        }
    }
}

/// The canonical body of `body` under `rules`.
pub(super) fn canonical_body(body: Body<'_>, rules: &CompiledRules) -> CanonicalBody {
    let parsed;
    // The canonical text is about as long as the body sent; a parsed body gets a guess.
    let capacity = match body {
        Body::Bytes(bytes) => bytes.len(),
        Body::Empty | Body::Json(_) => 256,
    };
    let value = match body {
        Body::Empty | Body::Bytes([]) => return CanonicalBody::Empty,
        Body::Json(value) => value,
        Body::Bytes(bytes) => match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => {
                parsed = value;
                &parsed
            }
            Err(_) => {
                return CanonicalBody::Raw {
                    len: bytes.len(),
                    sha256: hex::encode(Sha256::digest(bytes)),
                };
            }
        },
    };
    let root = [PointerTrie::ROOT];
    if rules.ignore.terminals(&root).next().is_some() {
        return CanonicalBody::Json("null".to_owned());
    }
    let active: Vec<usize> = rules.mask.terminals(&root).collect();
    let states = |trie: &PointerTrie| {
        if trie.is_empty() {
            Vec::new()
        } else {
            root.to_vec()
        }
    };
    let mut emitter = Emitter {
        rules,
        out: String::with_capacity(capacity),
        ids: HashMap::new(),
    };
    emitter.value(
        value,
        &states(&rules.ignore),
        &states(&rules.mask),
        &active,
        false,
    );
    CanonicalBody::Json(emitter.out)
}

/// Writes the canonical JSON text of a body in one pass: ignore rules applied, keys
/// sorted, numbers normalised, patterns masked, and tool-call ids renamed to `call#0`,
/// `call#1`, … by order of first appearance in that sorted text.
struct Emitter<'r> {
    rules: &'r CompiledRules,
    out: String,
    ids: HashMap<String, usize>,
}

impl Emitter<'_> {
    /// `ignore` and `mask` are the trie states at `value`; `active` the mask rules that
    /// apply to every string at or below it; `id_field` whether `value` sits under a
    /// field that holds tool-call ids.
    fn value(
        &mut self,
        value: &Value,
        ignore: &[usize],
        mask: &[usize],
        active: &[usize],
        id_field: bool,
    ) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let tool_object = is_tool_object(map);
                self.out.push('{');
                let mut first = true;
                for (key, child) in entries {
                    let Some((ignore, mask, active)) = self.descend(key, ignore, mask, active)
                    else {
                        continue;
                    };
                    if !first {
                        self.out.push(',');
                    }
                    first = false;
                    write_json_str(&mut self.out, key);
                    self.out.push(':');
                    let id_field =
                        (key == "id" && tool_object) || TOOL_ID_FIELDS.contains(&key.as_str());
                    self.value(child, &ignore, &mask, &active, id_field);
                }
                self.out.push('}');
            }
            Value::Array(items) => {
                let tracking = !ignore.is_empty() || !mask.is_empty();
                self.out.push('[');
                let mut first = true;
                for (i, child) in items.iter().enumerate() {
                    // Index keys are only needed while some rule can still match below.
                    let below = if tracking {
                        self.descend(&i.to_string(), ignore, mask, active)
                    } else {
                        Some((Vec::new(), Vec::new(), active.to_vec()))
                    };
                    let Some((ignore, mask, active)) = below else {
                        continue;
                    };
                    if !first {
                        self.out.push(',');
                    }
                    first = false;
                    self.value(child, &ignore, &mask, &active, false);
                }
                self.out.push(']');
            }
            Value::String(s) => self.string(s, active, id_field),
            Value::Number(n) => {
                // Writing to a String cannot fail.
                let _ = write!(self.out, "{}", normalise_number(n));
            }
            Value::Bool(true) => self.out.push_str("true"),
            Value::Bool(false) => self.out.push_str("false"),
            Value::Null => self.out.push_str("null"),
        }
    }

    /// The trie states and active masks below `key`, or `None` when an ignore rule
    /// removes it.
    fn descend(
        &self,
        key: &str,
        ignore: &[usize],
        mask: &[usize],
        active: &[usize],
    ) -> Option<(Vec<usize>, Vec<usize>, Vec<usize>)> {
        let ignore = if ignore.is_empty() {
            Vec::new()
        } else {
            self.rules.ignore.advance(ignore, key)
        };
        if self.rules.ignore.terminals(&ignore).next().is_some() {
            return None;
        }
        let mask = if mask.is_empty() {
            Vec::new()
        } else {
            self.rules.mask.advance(mask, key)
        };
        let mut active = active.to_vec();
        active.extend(self.rules.mask.terminals(&mask));
        active.sort_unstable();
        active.dedup();
        Some((ignore, mask, active))
    }

    fn string(&mut self, s: &str, active: &[usize], id_field: bool) {
        let mut text = std::borrow::Cow::Borrowed(s);
        for &rule in active {
            if let Some(regex) = self.rules.patterns.get(rule)
                && regex.is_match(&text)
            {
                text = std::borrow::Cow::Owned(
                    regex.replace_all(&text, NoExpand(MASKED)).into_owned(),
                );
            }
        }
        if is_tool_call_id(&text, id_field) {
            let next = self.ids.len();
            let n = *self.ids.entry(text.into_owned()).or_insert(next);
            write_json_str(&mut self.out, &format!("call#{n}"));
        } else {
            write_json_str(&mut self.out, &text);
        }
    }
}

/// Appends `s` as a JSON string literal, escaped exactly as `serde_json` does. Every
/// string of every signed body passes here: the runs between escapes are found a block at
/// a time ([`first_to_escape`]) and copied whole.
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(offset) = first_to_escape(&bytes[start..]) {
        let i = start + offset;
        // The escaped bytes are ASCII: `i` is a character boundary.
        out.push_str(&s[start..i]);
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The position of the first byte a JSON string escapes (a quote, a backslash or a
/// control character). Each 16-byte block is tested without a branch per byte, which the
/// compiler turns into vector compares; only a block with such a byte is searched.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 16;
    let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let (blocks, rest) = bytes.as_chunks::<BLOCK>();
    let mut base = 0;
    for block in blocks {
        if block.iter().fold(false, |any, &b| any | escaped(b)) {
            return block.iter().position(|&b| escaped(b)).map(|i| base + i);
        }
        base += BLOCK;
    }
    rest.iter().position(|&b| escaped(b)).map(|i| base + i)
}

/// Integral numbers (`1`, `1.0`, `1e0`, `-0.0`) become integers; others keep their
/// shortest round-trip form.
fn normalise_number(n: &Number) -> Number {
    if n.is_i64() || n.is_u64() {
        return n.clone();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "integral and within i64 range, checked above"
            )]
            let i = f as i64;
            Number::from(i)
        }
        Some(f) => Number::from_f64(f).unwrap_or_else(|| n.clone()),
        None => n.clone(),
    }
}

/// Whether a string is a tool-call id: it starts `call_` or `toolu_`, or it is an
/// id-like token (with a digit) under `tool_call_id`, `tool_use_id`, `call_id`, or `id`
/// inside a tool call or result.
fn is_tool_call_id(s: &str, id_field: bool) -> bool {
    is_token(s)
        && (TOOL_ID_PREFIXES.iter().any(|p| s.starts_with(p))
            || (id_field && s.bytes().any(|b| b.is_ascii_digit())))
}

/// Whether an object is a tool call or tool result, whose `id` is a tool-call id.
fn is_tool_object(map: &Map<String, Value>) -> bool {
    let typed = map
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| TOOL_OBJECT_TYPES.contains(&t));
    let shaped = map.contains_key("function")
        || (map.contains_key("name")
            && ["input", "arguments", "args", "response"]
                .iter()
                .any(|k| map.contains_key(*k)));
    typed || shaped
}

/// A single token of id characters, long enough not to be a word.
fn is_token(s: &str) -> bool {
    (8..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::signature::Signature;
    use crate::signature::test_support::{rules, sig, tool_turns};

    #[test]
    fn key_order_and_number_forms_do_not_matter() {
        let r = rules();
        let a: Value = serde_json::from_str(
            r#"{"model":"m","max_tokens":1,"temperature":0.5,"n":1e0,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":5e-1,"n":1.0,"max_tokens":1.0,"model":"m"}"#,
        )
        .unwrap();
        assert_eq!(sig(&a, &r), sig(&b, &r));
        // Bytes and parsed JSON agree, and so do method and host case.
        let bytes = serde_json::to_vec(&b).unwrap();
        let from_bytes = Signature::of(
            "post",
            "API.openai.com.",
            "/v1/chat/completions",
            Body::Bytes(&bytes),
            &r,
        );
        assert_eq!(sig(&a, &r), from_bytes);
        assert_eq!(sig(&a, &r).hex().len(), 64);
    }

    #[test]
    fn tool_ids_renamed_consistently_match() {
        let r = rules();
        let ts = ["t", "t"];
        let recorded = tool_turns(["call_abc123XYZ", "call_def456UVW"], ts, 2);
        let replayed = tool_turns(["call_Q9w8e7r6", "call_zz11yy22"], ts, 2);
        assert_eq!(sig(&recorded, &r), sig(&replayed, &r));
        // Consistency matters: swapping which call a result answers is a different request.
        let mut swapped = replayed.clone();
        swapped["messages"][2]["tool_call_id"] = json!("call_zz11yy22");
        swapped["messages"][4]["tool_call_id"] = json!("call_Q9w8e7r6");
        assert_ne!(sig(&recorded, &r), sig(&swapped, &r));
        // Anthropic ids too.
        let a = json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01AbCdEf", "name": "x", "input": {}}]},
                                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01AbCdEf", "content": "ok"}]}]});
        let b = json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_09ZyXwVu", "name": "x", "input": {}}]},
                                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_09ZyXwVu", "content": "ok"}]}]});
        assert_eq!(sig(&a, &r), sig(&b, &r));
    }

    #[test]
    fn canonical_text_is_json_escaped_like_serde_json() {
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} nul \u{0} del \u{7f} é 😀 </script>";
        let mut out = String::new();
        write_json_str(&mut out, tricky);
        assert_eq!(out, serde_json::to_string(tricky).unwrap());
        let body = json!({"b": [1.0, tricky, null, true], "a": {"z": -0.0, "y": 2.5e3}});
        let s = sig(&body, &rules());
        let CanonicalBody::Json(text) = &s.canonical().body else {
            panic!("not a JSON body: {:?}", s.canonical().body);
        };
        assert_eq!(
            text,
            &format!(r#"{{"a":{{"y":2500,"z":0}},"b":[1,{out},null,true]}}"#)
        );
        assert_eq!(
            s.canonical().body.to_value().unwrap(),
            json!({"a": {"y": 2500, "z": 0}, "b": [1, tricky, null, true]})
        );
    }

    #[test]
    pub(super) fn hashed_text_is_the_json_array_of_the_parts() {
        let tricky = "quote \" backslash \\ newline \n nul \u{0} é";
        let canonical = CanonicalRequest {
            method: "POST".into(),
            host: "h".into(),
            path: format!("/p/{tricky}"),
            query: vec![("a".into(), tricky.into()), ("b".into(), String::new())],
            headers: vec![(tricky.into(), "v".into())],
            body: CanonicalBody::Json(r#"{"a":1}"#.into()),
        };
        let want = json!([
            "POST",
            "h",
            canonical.path,
            [["a", tricky], ["b", ""]],
            [[tricky, "v"]],
            ["json", {"a": 1}]
        ]);
        assert_eq!(canonical.hashed_text(), want.to_string());
        let bare = CanonicalRequest {
            query: Vec::new(),
            headers: Vec::new(),
            body: CanonicalBody::Empty,
            ..canonical
        };
        assert_eq!(
            bare.hashed_text(),
            json!(["POST", "h", bare.path, [], [], ["empty"]]).to_string()
        );
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does_at_any_offset() {
        let long = "é plain text that runs over several blocks ".repeat(3);
        for special in [
            "\"", "\\", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{0}", "\u{1f}", "é",
        ] {
            for at in [0, 1, 15, 16, 17, 31, 32, long.len()] {
                let text = format!("{}{special}{}", &long[..long.floor_char_boundary(at)], long);
                let mut out = String::new();
                write_json_str(&mut out, &text);
                assert_eq!(out, Value::String(text.clone()).to_string(), "{text:?}");
            }
        }
    }

    #[test]
    fn raw_and_empty_bodies() {
        let r = rules();
        let raw = Signature::of("POST", "h", "/upload", Body::Bytes(b"\x00\x01not json"), &r);
        let same = Signature::of("POST", "h", "/upload", Body::Bytes(b"\x00\x01not json"), &r);
        let other = Signature::of("POST", "h", "/upload", Body::Bytes(b"\x00\x02not json"), &r);
        assert_eq!(raw, same);
        assert_ne!(raw, other);
        let none = Signature::of("GET", "h", "/v1/models", Body::Empty, &r);
        let empty = Signature::of("GET", "h", "/v1/models", Body::Bytes(b""), &r);
        assert_eq!(none, empty);
    }
}
