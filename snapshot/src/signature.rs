//! Request signatures: what makes two requests "the same" for replay. A [`Signature`] is a
//! SHA-256 digest of a canonical form of the request: the method, host and path, the
//! query parameters (sorted, `key` always dropped), the headers named by
//! [`MatchRules::include_headers`] (none by default), and the JSON body with its object
//! keys sorted, its numbers normalised (`1`, `1.0` and `1e0` are equal), volatile fields
//! removed ([`DEFAULT_IGNORED_POINTERS`] plus the snapshot's own rules), masked patterns
//! replaced and tool-call ids renamed by order of first appearance, so an agent loop's
//! growing conversation matches its recording. [`SignatureIndex`] serves recorded
//! exchanges by signature in recorded order, applies the [`Repeat`] policy once they run
//! out, and for a miss finds the closest recorded request and a field-level diff.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::{NoExpand, Regex};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Body fields left out of every signature unless [`MatchRules::keep_volatile_fields`] is
/// set. They identify the caller or the attempt, or tune delivery, and do not change what
/// the model answers:
///
/// - `/user`, `/safety_identifier`: end-user ids (`OpenAI`).
/// - `/metadata`: free-form tags and `user_id` (`OpenAI`, Anthropic).
/// - `/stream_options`: delivery options such as `include_usage`.
/// - `/prompt_cache_key`: a cache-routing hint.
/// - `/request_id`, `/client_request_id`, `/idempotency_key`: per-attempt ids that some
///   clients put in the body.
///
/// Headers need no such list: none is part of a signature unless named by
/// [`MatchRules::include_headers`], so idempotency keys, trace headers (`traceparent`,
/// `x-request-id`), SDK telemetry (`x-stainless-*`, `user-agent`) and credentials are out.
pub const DEFAULT_IGNORED_POINTERS: &[&str] = &[
    "/user",
    "/safety_identifier",
    "/metadata",
    "/stream_options",
    "/prompt_cache_key",
    "/request_id",
    "/client_request_id",
    "/idempotency_key",
];

/// Query parameters dropped from every signature: `key` carries Gemini's API key.
pub const ALWAYS_DROPPED_QUERY: &[&str] = &["key"];

/// What [`MatchRules::mask`] puts in place of a masked occurrence.
pub const MASKED: &str = "<masked>";

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
/// Weight of a method, host or path difference in [`SignatureIndex::closest`].
const ROUTE_WEIGHT: usize = 1_000;
/// Longest value shown in a [`FieldDiff`]'s `Display`.
const MAX_SHOWN: usize = 160;

/// Errors from compiling [`MatchRules`].
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A JSON pointer is neither empty nor starts with `/`.
    #[error("JSON pointer {pointer:?} must be empty or start with '/'")]
    PointerWithoutSlash {
        /// The pointer as written.
        pointer: String,
    },
    /// A JSON pointer has a `~` not followed by `0` or `1`.
    #[error("JSON pointer {pointer:?} has a '~' that is not '~0' or '~1'")]
    PointerBadEscape {
        /// The pointer as written.
        pointer: String,
    },
    /// A mask rule's pattern is not a valid regular expression.
    #[error("mask pattern {pattern:?} for {pointer:?} is not a valid regular expression")]
    MaskPattern {
        /// The rule's pointer.
        pointer: String,
        /// The pattern as written.
        pattern: String,
        /// Why it did not compile.
        #[source]
        source: regex::Error,
    },
    /// A header name pattern is not a valid glob.
    #[error("header pattern {pattern:?} is not a valid glob")]
    HeaderGlob {
        /// The pattern as written.
        pattern: String,
        /// Why it did not compile.
        #[source]
        source: globset::Error,
    },
    /// A repeat policy name is not `last`, `cycle` or `fail`.
    #[error("unknown repeat policy {value:?}: expected last, cycle or fail")]
    UnknownRepeat {
        /// The name given.
        value: String,
    },
}

/// The `[match]` section of a snapshot's `llmsim.toml`: rules added to the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchRules {
    /// Body fields to leave out, as RFC 6901 JSON pointers; a whole segment `*` matches
    /// any key or array index, e.g. `/messages/*/content/*/timestamp`.
    pub ignore_json_pointers: Vec<String>,
    /// Header names (case-insensitive globs) to leave out even when `include_headers`
    /// names them.
    pub ignore_headers: Vec<String>,
    /// Header names (case-insensitive globs, e.g. `anthropic-*`) whose values are part
    /// of the signature. Default none: headers do not take part in matching.
    pub include_headers: Vec<String>,
    /// Query parameter names to leave out (`key` always is).
    pub ignore_query: Vec<String>,
    /// Match any model: leave out the body's `/model` and the model or deployment
    /// segment of paths such as `/v1beta/models/{model}:generateContent` and
    /// `/openai/deployments/{deployment}/...`.
    pub wildcard_model: bool,
    /// Patterns to mask inside string values before hashing, for values that change per
    /// run, such as timestamps in tool results.
    pub mask: Vec<MaskRule>,
    /// Keep the fields of [`DEFAULT_IGNORED_POINTERS`] in signatures.
    pub keep_volatile_fields: bool,
}

/// One masking rule of [`MatchRules::mask`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskRule {
    /// Where to mask, as a JSON pointer with `*` segments. Every string at or below the
    /// pointed-to value is masked.
    pub pointer: String,
    /// A regular expression (Rust `regex` syntax); each match is replaced by `<masked>`.
    pub pattern: String,
}

impl MatchRules {
    /// Checks and compiles the rules, once, for [`Signature::of`].
    pub fn compile(&self) -> Result<CompiledRules, SignatureError> {
        let mut ignore = PointerTrie::default();
        let defaults = if self.keep_volatile_fields {
            &[][..]
        } else {
            DEFAULT_IGNORED_POINTERS
        };
        let model = if self.wildcard_model {
            &["/model"][..]
        } else {
            &[][..]
        };
        for pointer in defaults.iter().chain(model).copied() {
            ignore.insert(&parse_pointer(pointer)?, 0);
        }
        for pointer in &self.ignore_json_pointers {
            ignore.insert(&parse_pointer(pointer)?, 0);
        }
        let mut mask = PointerTrie::default();
        let mut patterns = Vec::with_capacity(self.mask.len());
        for (i, rule) in self.mask.iter().enumerate() {
            mask.insert(&parse_pointer(&rule.pointer)?, i);
            patterns.push(Regex::new(&rule.pattern).map_err(|source| {
                SignatureError::MaskPattern {
                    pointer: rule.pointer.clone(),
                    pattern: rule.pattern.clone(),
                    source,
                }
            })?);
        }
        Ok(CompiledRules {
            ignore,
            mask,
            patterns,
            include_headers: glob_set(&self.include_headers)?,
            ignore_headers: glob_set(&self.ignore_headers)?,
            ignore_query: self.ignore_query.clone(),
            wildcard_model: self.wildcard_model,
        })
    }
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, SignatureError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .case_insensitive(true)
            .build()
            .map_err(|source| SignatureError::HeaderGlob {
                pattern: pattern.clone(),
                source,
            })?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|source| SignatureError::HeaderGlob {
            pattern: patterns.join(", "),
            source,
        })
}

/// [`MatchRules`] checked and compiled: pointer tries, regexes and header globs.
#[derive(Clone, Debug)]
pub struct CompiledRules {
    ignore: PointerTrie,
    mask: PointerTrie,
    patterns: Vec<Regex>,
    include_headers: GlobSet,
    ignore_headers: GlobSet,
    ignore_query: Vec<String>,
    wildcard_model: bool,
}

impl CompiledRules {
    fn keeps_header(&self, name: &str) -> bool {
        self.include_headers.is_match(name) && !self.ignore_headers.is_match(name)
    }

    fn keeps_query(&self, name: &str) -> bool {
        !ALWAYS_DROPPED_QUERY.contains(&name) && !self.ignore_query.iter().any(|q| q == name)
    }
}

/// A JSON pointer segment: a key (or array index) or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Any,
}

fn parse_pointer(pointer: &str) -> Result<Vec<Segment>, SignatureError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(SignatureError::PointerWithoutSlash {
            pointer: pointer.to_owned(),
        });
    };
    rest.split('/')
        .map(|raw| {
            if raw == "*" {
                return Ok(Segment::Any);
            }
            let mut key = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => key.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => key.push('~'),
                        Some('1') => key.push('/'),
                        _ => {
                            return Err(SignatureError::PointerBadEscape {
                                pointer: pointer.to_owned(),
                            });
                        }
                    },
                }
            }
            Ok(Segment::Key(key))
        })
        .collect()
}

/// Escapes one key for a JSON pointer.
fn escape_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A trie over pointer segments, walked alongside the JSON tree: a set of current nodes
/// advances by each key, so the cost does not grow with the number of rules.
#[derive(Clone, Debug)]
struct PointerTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    children: HashMap<String, usize>,
    any: Option<usize>,
    /// Rule ids ending here.
    terminals: Vec<usize>,
}

impl Default for PointerTrie {
    fn default() -> Self {
        Self {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl PointerTrie {
    const ROOT: usize = 0;

    fn insert(&mut self, segments: &[Segment], rule: usize) {
        let mut node = Self::ROOT;
        for segment in segments {
            let next = match segment {
                Segment::Key(key) => self.nodes[node].children.get(key).copied(),
                Segment::Any => self.nodes[node].any,
            };
            node = if let Some(next) = next {
                next
            } else {
                let id = self.nodes.len();
                self.nodes.push(TrieNode::default());
                match segment {
                    Segment::Key(key) => {
                        self.nodes[node].children.insert(key.clone(), id);
                    }
                    Segment::Any => self.nodes[node].any = Some(id),
                }
                id
            };
        }
        self.nodes[node].terminals.push(rule);
    }

    fn is_empty(&self) -> bool {
        self.nodes.len() == 1 && self.nodes[Self::ROOT].terminals.is_empty()
    }

    /// The states after `key`, given the states before.
    fn advance(&self, states: &[usize], key: &str) -> Vec<usize> {
        let mut next = Vec::new();
        for &state in states {
            let node = &self.nodes[state];
            if let Some(&child) = node.children.get(key) {
                next.push(child);
            }
            if let Some(any) = node.any {
                next.push(any);
            }
        }
        next
    }

    fn terminals<'a>(&'a self, states: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
        states
            .iter()
            .flat_map(|&s| self.nodes[s].terminals.iter().copied())
    }
}

/// A request body as handed to [`Signature::of`].
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
    /// The path, with the model wildcarded under [`MatchRules::wildcard_model`].
    pub path: String,
    /// The kept query parameters, sorted.
    pub query: Vec<(String, String)>,
    /// The kept headers (lower-case names), sorted.
    pub headers: Vec<(String, String)>,
    /// The canonical body.
    pub body: CanonicalBody,
}

impl CanonicalRequest {
    /// The unambiguous text that is hashed: the JSON array `[method, host, path,
    /// [[k, v], …] (query), [[k, v], …] (headers), body]`, written directly rather than
    /// through a `Value`, as every recorded request is signed at start-up.
    fn hashed_text(&self) -> String {
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
        let mut text = String::with_capacity(256);
        text.push('[');
        write_json_str(&mut text, &self.method);
        text.push(',');
        write_json_str(&mut text, &self.host);
        text.push(',');
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

/// A request signature: the SHA-256 of the canonical request, plus that canonical form.
/// Equality and hashing use the digest alone.
#[derive(Clone, Debug)]
pub struct Signature {
    digest: [u8; 32],
    canonical: Arc<CanonicalRequest>,
}

impl PartialEq for Signature {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for Signature {}

impl std::hash::Hash for Signature {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Signature {
    /// The signature of a request without headers (none take part by default).
    /// `path_and_query` is the request target, e.g. `/v1/chat/completions?x=1`.
    pub fn of(
        method: &str,
        host: &str,
        path_and_query: &str,
        body: Body<'_>,
        rules: &CompiledRules,
    ) -> Self {
        Self::with_headers(
            method,
            host,
            path_and_query,
            std::iter::empty::<(&str, &[u8])>(),
            body,
            rules,
        )
    }

    /// The signature of a request whose headers are offered for
    /// [`MatchRules::include_headers`].
    pub fn with_headers<N, V>(
        method: &str,
        host: &str,
        path_and_query: &str,
        headers: impl IntoIterator<Item = (N, V)>,
        body: Body<'_>,
        rules: &CompiledRules,
    ) -> Self
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        // Every request is signed: what the rules leave out is dropped before it is copied.
        let mut query: Vec<(String, String)> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .filter(|(k, _)| rules.keeps_query(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        query.sort();
        let mut headers: Vec<(String, String)> = if rules.include_headers.is_empty() {
            Vec::new()
        } else {
            headers
                .into_iter()
                .map(|(n, v)| (n.as_ref().to_ascii_lowercase(), v))
                .filter(|(n, _)| rules.keeps_header(n))
                .map(|(n, v)| (n, String::from_utf8_lossy(v.as_ref()).trim().to_owned()))
                .collect()
        };
        headers.sort();
        let path = if rules.wildcard_model {
            wildcard_model_path(path)
        } else {
            path.to_owned()
        };
        let canonical = CanonicalRequest {
            method: method.to_ascii_uppercase(),
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            path,
            query,
            headers,
            body: canonical_body(body, rules),
        };
        Self::from_canonical(canonical)
    }

    /// The signature of an already canonical request.
    pub fn from_canonical(canonical: CanonicalRequest) -> Self {
        let digest = Sha256::digest(canonical.hashed_text().as_bytes()).into();
        Self {
            digest,
            canonical: Arc::new(canonical),
        }
    }

    /// The SHA-256 digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The digest, hex.
    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// The canonical request the digest was computed from.
    pub fn canonical(&self) -> &CanonicalRequest {
        &self.canonical
    }
}

/// Replaces the model in `/…/models/{model}:{method}` and the deployment in
/// `/…/deployments/{deployment}/…` with `*`.
fn wildcard_model_path(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    let mut out: Vec<String> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let after = i.checked_sub(1).map(|p| segments[p]);
        match after {
            Some("models") if !segment.is_empty() => match segment.split_once(':') {
                Some((_, method)) => out.push(format!("*:{method}")),
                None => out.push("*".to_owned()),
            },
            Some("deployments") if !segment.is_empty() => out.push("*".to_owned()),
            _ => out.push((*segment).to_owned()),
        }
    }
    out.join("/")
}

fn canonical_body(body: Body<'_>, rules: &CompiledRules) -> CanonicalBody {
    let parsed;
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
        out: String::with_capacity(256),
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

/// Appends `s` as a JSON string literal, escaped exactly as `serde_json` does.
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
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

/// What [`SignatureIndex`] does once a signature's recorded exchanges are used up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Repeat {
    /// Serve the last recorded exchange again (reported as a repeat).
    #[default]
    Last,
    /// Start again from the first recorded exchange (reported as a repeat).
    Cycle,
    /// Serve nothing: the request is a miss.
    Fail,
}

impl std::str::FromStr for Repeat {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "last" => Ok(Self::Last),
            "cycle" => Ok(Self::Cycle),
            "fail" => Ok(Self::Fail),
            _ => Err(SignatureError::UnknownRepeat {
                value: s.to_owned(),
            }),
        }
    }
}

/// An exchange chosen by [`SignatureIndex::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// The exchange index given to [`SignatureIndex::new`].
    pub exchange: usize,
    /// True when the recorded exchanges for this signature were already used up and the
    /// [`Repeat`] policy chose this one: count it as a warning.
    pub repeated: bool,
}

/// The recorded exchanges of one signature and how many were served.
#[derive(Debug)]
struct Entry {
    exchanges: Vec<usize>,
    served: AtomicUsize,
}

/// Recorded signatures, looked up by digest (a hash map, never a scan), each serving its
/// exchanges in recorded order. Lookups take `&self` and are safe from many connections.
#[derive(Debug)]
pub struct SignatureIndex {
    by_digest: HashMap<[u8; 32], Entry, BuildHasherDefault<DigestHasher>>,
    recorded: Vec<(usize, Arc<CanonicalRequest>)>,
    /// Only a miss needs them: built on the first one, not at start-up.
    neighbourhoods: OnceLock<Neighbourhoods>,
    repeat: Repeat,
}

/// Recorded positions grouped by route and by host, where [`SignatureIndex::closest`]
/// looks first.
#[derive(Debug, Default)]
struct Neighbourhoods {
    by_route: HashMap<(String, String, String), Vec<usize>>,
    by_host: HashMap<String, Vec<usize>>,
}

impl Neighbourhoods {
    fn of(recorded: &[(usize, Arc<CanonicalRequest>)]) -> Self {
        let mut groups = Self::default();
        for (position, (_, c)) in recorded.iter().enumerate() {
            groups
                .by_route
                .entry((c.method.clone(), c.host.clone(), c.path.clone()))
                .or_default()
                .push(position);
            groups
                .by_host
                .entry(c.host.clone())
                .or_default()
                .push(position);
        }
        groups
    }
}

/// Hashes a SHA-256 digest by its first eight bytes: they are already uniform, so
/// hashing them again would only cost time on every start-up and lookup.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }
}

impl SignatureIndex {
    /// Builds the index from (exchange index, signature) pairs in recorded order.
    pub fn new(entries: impl IntoIterator<Item = (usize, Signature)>, repeat: Repeat) -> Self {
        let entries = entries.into_iter();
        let mut index = Self {
            by_digest: HashMap::with_capacity_and_hasher(
                entries.size_hint().0,
                BuildHasherDefault::default(),
            ),
            recorded: Vec::with_capacity(entries.size_hint().0),
            neighbourhoods: OnceLock::new(),
            repeat,
        };
        for (exchange, signature) in entries {
            index
                .by_digest
                .entry(signature.digest)
                .or_insert_with(|| Entry {
                    exchanges: Vec::new(),
                    served: AtomicUsize::new(0),
                })
                .exchanges
                .push(exchange);
            index.recorded.push((exchange, signature.canonical));
        }
        index
    }

    /// How many exchanges the index holds.
    pub fn len(&self) -> usize {
        self.recorded.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }

    /// How many exchanges were recorded with `signature`.
    pub fn recorded_count(&self, signature: &Signature) -> usize {
        self.by_digest
            .get(&signature.digest)
            .map_or(0, |e| e.exchanges.len())
    }

    /// The next exchange for `signature`: its recorded exchanges in recorded order, then
    /// what the [`Repeat`] policy says. `None` for a signature never recorded, or used up
    /// under [`Repeat::Fail`] (tell them apart with [`Self::recorded_count`]).
    pub fn next(&self, signature: &Signature) -> Option<Served> {
        let entry = self.by_digest.get(&signature.digest)?;
        let count = entry.exchanges.len();
        let n = entry.served.fetch_add(1, Ordering::Relaxed);
        if n < count {
            return Some(Served {
                exchange: entry.exchanges[n],
                repeated: false,
            });
        }
        let exchange = match self.repeat {
            Repeat::Last => entry.exchanges.last().copied(),
            Repeat::Cycle => entry.exchanges.get(n % count).copied(),
            Repeat::Fail => None,
        }?;
        Some(Served {
            exchange,
            repeated: true,
        })
    }

    /// Rewinds every signature to its first recorded exchange.
    pub fn rewind(&self) {
        for entry in self.by_digest.values() {
            entry.served.store(0, Ordering::Relaxed);
        }
    }

    /// For a miss: the recorded request nearest to `requested` and how they differ.
    /// Requests with the same method, host and path are searched first, then the same
    /// host, then all; among them the one with the smallest field-level distance wins,
    /// the earliest on a tie.
    pub fn closest(&self, requested: &CanonicalRequest) -> Option<(usize, Vec<FieldDiff>)> {
        let route = (
            requested.method.clone(),
            requested.host.clone(),
            requested.path.clone(),
        );
        let groups = self
            .neighbourhoods
            .get_or_init(|| Neighbourhoods::of(&self.recorded));
        let all: Vec<usize>;
        let candidates: &[usize] = if let Some(same) = groups.by_route.get(&route) {
            same
        } else if let Some(same) = groups.by_host.get(&requested.host) {
            same
        } else {
            all = (0..self.recorded.len()).collect();
            &all
        };
        let requested_body = requested.body.to_value();
        let mut best: Option<(usize, usize)> = None;
        for &position in candidates {
            let cap = best.map_or(usize::MAX, |(_, d)| d);
            let mut sink = DiffSink::counting(cap);
            compare_requests(
                &self.recorded[position].1,
                requested,
                requested_body.as_ref(),
                &mut sink,
            );
            if !sink.over_cap() && best.is_none_or(|(_, d)| sink.weight < d) {
                best = Some((position, sink.weight));
            }
        }
        let (position, _) = best?;
        let (exchange, recorded) = &self.recorded[position];
        let mut sink = DiffSink::collecting();
        compare_requests(recorded, requested, requested_body.as_ref(), &mut sink);
        Some((*exchange, sink.diffs))
    }
}

/// One difference between a recorded request and a requested one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDiff {
    /// Where: a JSON pointer into the body (`/messages/2/content`; empty for the whole
    /// body), or `method`, `host`, `path`, `?name` for a query parameter, or
    /// `header name` for a header.
    pub pointer: String,
    /// The recorded value, `None` when the recorded request lacks it.
    pub recorded: Option<Value>,
    /// The requested value, `None` when the request lacks it.
    pub requested: Option<Value>,
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.pointer.is_empty() {
            "body"
        } else {
            &self.pointer
        };
        let show = |v: &Option<Value>| match v {
            None => "(absent)".to_owned(),
            Some(v) => {
                let text = v.to_string();
                if text.chars().count() > MAX_SHOWN {
                    let cut: String = text.chars().take(MAX_SHOWN).collect();
                    format!("{cut}…")
                } else {
                    text
                }
            }
        };
        write!(
            f,
            "{place}: recorded {}, requested {}",
            show(&self.recorded),
            show(&self.requested)
        )
    }
}

/// Collects differences, or only weighs them with an early stop.
struct DiffSink {
    diffs: Vec<FieldDiff>,
    collect: bool,
    weight: usize,
    cap: usize,
}

impl DiffSink {
    fn counting(cap: usize) -> Self {
        Self {
            diffs: Vec::new(),
            collect: false,
            weight: 0,
            cap,
        }
    }

    fn collecting() -> Self {
        Self {
            diffs: Vec::new(),
            collect: true,
            weight: 0,
            cap: usize::MAX,
        }
    }

    fn over_cap(&self) -> bool {
        self.weight >= self.cap
    }

    fn add(
        &mut self,
        pointer: impl FnOnce() -> String,
        weight: usize,
        recorded: Option<&Value>,
        requested: Option<&Value>,
    ) {
        self.weight = self.weight.saturating_add(weight);
        if self.collect {
            self.diffs.push(FieldDiff {
                pointer: pointer(),
                recorded: recorded.cloned(),
                requested: requested.cloned(),
            });
        }
    }
}

/// Compares two canonical requests; `requested_body` is `requested.body.to_value()`,
/// parsed once by the caller.
fn compare_requests(
    recorded: &CanonicalRequest,
    requested: &CanonicalRequest,
    requested_body: Option<&Value>,
    sink: &mut DiffSink,
) {
    for (name, a, b) in [
        ("method", &recorded.method, &requested.method),
        ("host", &recorded.host, &requested.host),
        ("path", &recorded.path, &requested.path),
    ] {
        if a != b {
            sink.add(
                || name.to_owned(),
                ROUTE_WEIGHT,
                Some(&Value::String(a.clone())),
                Some(&Value::String(b.clone())),
            );
        }
    }
    compare_pairs("?", &recorded.query, &requested.query, sink);
    compare_pairs("header ", &recorded.headers, &requested.headers, sink);
    if sink.over_cap() {
        return;
    }
    if recorded.body == requested.body {
        return;
    }
    let recorded_body = recorded.body.to_value();
    match (
        &recorded.body,
        &recorded_body,
        &requested.body,
        requested_body,
    ) {
        (CanonicalBody::Json(_), Some(a), CanonicalBody::Json(_), Some(b)) => {
            let mut pointer = String::new();
            compare_values(&mut pointer, a, b, sink);
        }
        (_, a, _, b) => {
            let weight = leaves(a.as_ref()).max(leaves(b));
            sink.add(String::new, weight, a.as_ref(), b);
        }
    }
}

/// Compares query parameters or headers by name.
fn compare_pairs(
    prefix: &str,
    recorded: &[(String, String)],
    requested: &[(String, String)],
    sink: &mut DiffSink,
) {
    fn group(list: &[(String, String)]) -> BTreeMap<&str, Vec<&str>> {
        let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in list {
            map.entry(k.as_str()).or_default().push(v.as_str());
        }
        map
    }
    let (a, b) = (group(recorded), group(requested));
    let mut names: Vec<&str> = a.keys().chain(b.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let as_value = |values: Option<&Vec<&str>>| values.map(|v| Value::String(v.join(",")));
    for name in names {
        let (x, y) = (a.get(name), b.get(name));
        if x != y {
            sink.add(
                || format!("{prefix}{name}"),
                1,
                as_value(x).as_ref(),
                as_value(y).as_ref(),
            );
        }
    }
}

/// Compares two canonical JSON values, reporting the smallest differing subtrees.
fn compare_values(pointer: &mut String, a: &Value, b: &Value, sink: &mut DiffSink) {
    if sink.over_cap() {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape_segment(key));
                compare_optional(pointer, x.get(key.as_str()), y.get(key.as_str()), sink);
                pointer.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                compare_optional(pointer, x.get(i), y.get(i), sink);
                pointer.truncate(len);
            }
        }
        (x, y) if x == y => {}
        (x, y) => {
            let weight = leaves(Some(x)).max(leaves(Some(y)));
            sink.add(|| pointer.clone(), weight, Some(x), Some(y));
        }
    }
}

fn compare_optional(
    pointer: &mut String,
    a: Option<&Value>,
    b: Option<&Value>,
    sink: &mut DiffSink,
) {
    match (a, b) {
        (Some(a), Some(b)) => compare_values(pointer, a, b, sink),
        (None, None) => {}
        (a, b) => {
            let weight = leaves(a).max(leaves(b));
            sink.add(|| pointer.clone(), weight, a, b);
        }
    }
}

/// How many scalars a value holds (at least one), the weight of its difference.
fn leaves(value: Option<&Value>) -> usize {
    match value {
        None => 0,
        Some(Value::Object(map)) => map.values().map(|v| leaves(Some(v))).sum::<usize>().max(1),
        Some(Value::Array(items)) => items.iter().map(|v| leaves(Some(v))).sum::<usize>().max(1),
        Some(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> CompiledRules {
        MatchRules::default().compile().unwrap()
    }

    fn sig(body: &Value, rules: &CompiledRules) -> Signature {
        Signature::of(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            Body::Json(body),
            rules,
        )
    }

    fn chat(prompt: &str) -> Value {
        json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.7,
        })
    }

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
    fn volatile_fields_do_not_matter() {
        let r = rules();
        let mut a = chat("hi");
        let mut b = chat("hi");
        a["user"] = json!("alice");
        a["metadata"] = json!({"user_id": "1"});
        a["stream_options"] = json!({"include_usage": true});
        a["request_id"] = json!("req_1");
        b["user"] = json!("bob");
        b["idempotency_key"] = json!("k-2");
        assert_eq!(sig(&a, &r), sig(&b, &r));

        // Unless the snapshot keeps them.
        let keep = MatchRules {
            keep_volatile_fields: true,
            ..MatchRules::default()
        }
        .compile()
        .unwrap();
        assert_ne!(sig(&a, &keep), sig(&b, &keep));
    }

    #[test]
    fn headers_and_the_key_parameter_are_left_out() {
        let r = rules();
        let body = chat("hi");
        let a = Signature::with_headers(
            "POST",
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent?key=SECRET1&alt=sse",
            [("Idempotency-Key", &b"a"[..]), ("traceparent", b"00-1")],
            Body::Json(&body),
            &r,
        );
        let b = Signature::with_headers(
            "POST",
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent?alt=sse&key=SECRET2",
            [("Idempotency-Key", &b"b"[..])],
            Body::Json(&body),
            &r,
        );
        assert_eq!(a, b);
        assert!(!a.canonical().to_string().contains("SECRET"));

        // include_headers brings a header in; ignore_headers takes it out again.
        let with = MatchRules {
            include_headers: vec!["anthropic-*".into()],
            ignore_headers: vec!["anthropic-beta".into()],
            ..MatchRules::default()
        }
        .compile()
        .unwrap();
        let h = |version: &'static str, beta: &'static str| {
            Signature::with_headers(
                "POST",
                "api.anthropic.com",
                "/v1/messages",
                [("Anthropic-Version", version), ("anthropic-beta", beta)],
                Body::Json(&body),
                &with,
            )
        };
        assert_ne!(h("2023-06-01", "x"), h("2024-01-01", "x"));
        assert_eq!(h("2023-06-01", "x"), h("2023-06-01", "y"));
    }

    #[test]
    fn different_prompts_differ() {
        let r = rules();
        assert_ne!(sig(&chat("hello"), &r), sig(&chat("goodbye"), &r));
        let mut other_model = chat("hello");
        other_model["model"] = json!("gpt-4o");
        assert_ne!(sig(&chat("hello"), &r), sig(&other_model, &r));
        // Different paths and query parameters differ too.
        let body = chat("hello");
        let a = Signature::of("POST", "h", "/v1/a?x=1", Body::Json(&body), &r);
        let b = Signature::of("POST", "h", "/v1/a?x=2", Body::Json(&body), &r);
        let c = Signature::of("POST", "h", "/v1/b?x=1", Body::Json(&body), &r);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn wildcard_model_matches_any_model() {
        let wild = MatchRules {
            wildcard_model: true,
            ..MatchRules::default()
        }
        .compile()
        .unwrap();
        let mut other = chat("hello");
        other["model"] = json!("gpt-4o");
        assert_eq!(sig(&chat("hello"), &wild), sig(&other, &wild));
        let body = json!({"contents": []});
        let g = |model: &str| {
            Signature::of(
                "POST",
                "generativelanguage.googleapis.com",
                &format!("/v1beta/models/{model}:generateContent"),
                Body::Json(&body),
                &wild,
            )
        };
        assert_eq!(g("gemini-2.0-flash"), g("gemini-2.5-pro"));
        assert_eq!(g("x").canonical().path, "/v1beta/models/*:generateContent");
    }

    #[test]
    fn ignore_pointers_with_wildcards() {
        let r = MatchRules {
            ignore_json_pointers: vec!["/messages/*/content/*/timestamp".into(), "/a~1b".into()],
            ..MatchRules::default()
        }
        .compile()
        .unwrap();
        let body = |ts: u64, ab: u64| {
            json!({
                "a/b": ab,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi", "timestamp": ts}]},
                ],
            })
        };
        assert_eq!(sig(&body(1, 1), &r), sig(&body(2, 2), &r));
        assert!(
            MatchRules {
                ignore_json_pointers: vec!["messages".into()],
                ..MatchRules::default()
            }
            .compile()
            .is_err()
        );
        assert!(
            MatchRules {
                ignore_json_pointers: vec!["/a~2".into()],
                ..MatchRules::default()
            }
            .compile()
            .is_err()
        );
    }

    fn tool_turns(ids: [&str; 2], timestamps: [&str; 2], turns: usize) -> Value {
        let mut messages =
            vec![json!({"role": "user", "content": "what time is it in Paris and Tokyo?"})];
        for turn in 0..turns {
            messages.push(json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": ids[turn],
                    "type": "function",
                    "function": {"name": "clock", "arguments": format!("{{\"city\":{turn}}}")},
                }],
            }));
            messages.push(json!({
                "role": "tool",
                "tool_call_id": ids[turn],
                "content": format!("{{\"time\":\"{}\",\"ok\":true}}", timestamps[turn]),
            }));
        }
        json!({"model": "gpt-4o-mini", "messages": messages, "tools": [{"type": "function", "function": {"name": "clock"}}]})
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
    fn three_turn_loop_with_timestamps_matches_with_a_mask() {
        let masked = MatchRules {
            mask: vec![MaskRule {
                pointer: "/messages/*/content".into(),
                pattern: r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z".into(),
            }],
            ..MatchRules::default()
        }
        .compile()
        .unwrap();
        let plain = rules();
        let recorded = [
            tool_turns(
                ["call_a1b2c3d4", "call_e5f6g7h8"],
                ["2025-01-01T10:00:00Z", "2025-01-01T10:00:01Z"],
                0,
            ),
            tool_turns(
                ["call_a1b2c3d4", "call_e5f6g7h8"],
                ["2025-01-01T10:00:00Z", "2025-01-01T10:00:01Z"],
                1,
            ),
            tool_turns(
                ["call_a1b2c3d4", "call_e5f6g7h8"],
                ["2025-01-01T10:00:00Z", "2025-01-01T10:00:01Z"],
                2,
            ),
        ];
        let replayed = [
            tool_turns(
                ["call_zzzz9999", "call_yyyy8888"],
                ["2026-03-04T11:12:13.456Z", "2026-03-04T11:12:14Z"],
                0,
            ),
            tool_turns(
                ["call_zzzz9999", "call_yyyy8888"],
                ["2026-03-04T11:12:13.456Z", "2026-03-04T11:12:14Z"],
                1,
            ),
            tool_turns(
                ["call_zzzz9999", "call_yyyy8888"],
                ["2026-03-04T11:12:13.456Z", "2026-03-04T11:12:14Z"],
                2,
            ),
        ];
        let index = SignatureIndex::new(
            recorded
                .iter()
                .enumerate()
                .map(|(i, b)| (i, sig(b, &masked))),
            Repeat::Fail,
        );
        for (turn, body) in replayed.iter().enumerate() {
            let served = index.next(&sig(body, &masked)).unwrap();
            assert_eq!(
                served,
                Served {
                    exchange: turn,
                    repeated: false
                }
            );
        }
        // Without the mask, turns with tool results do not match.
        assert_ne!(sig(&recorded[1], &plain), sig(&replayed[1], &plain));
        assert_eq!(sig(&recorded[0], &plain), sig(&replayed[0], &plain));
        assert!(
            MatchRules {
                mask: vec![MaskRule {
                    pointer: "/x".into(),
                    pattern: "(".into()
                }],
                ..MatchRules::default()
            }
            .compile()
            .is_err()
        );
    }

    #[test]
    fn duplicates_are_served_in_order_then_repeat_applies() {
        let r = rules();
        let a = sig(&chat("a"), &r);
        let b = sig(&chat("b"), &r);
        let entries = vec![
            (0, a.clone()),
            (1, b.clone()),
            (2, a.clone()),
            (5, a.clone()),
        ];
        let served = |index: &SignatureIndex| index.next(&a).map(|s| (s.exchange, s.repeated));

        let last = SignatureIndex::new(entries.clone(), Repeat::Last);
        assert_eq!(last.recorded_count(&a), 3);
        let got: Vec<_> = (0..5).map(|_| served(&last)).collect();
        assert_eq!(
            got,
            [
                Some((0, false)),
                Some((2, false)),
                Some((5, false)),
                Some((5, true)),
                Some((5, true))
            ]
        );
        assert_eq!(
            last.next(&b),
            Some(Served {
                exchange: 1,
                repeated: false
            })
        );

        let cycle = SignatureIndex::new(entries.clone(), Repeat::Cycle);
        let got: Vec<_> = (0..5).map(|_| served(&cycle)).collect();
        assert_eq!(
            got,
            [
                Some((0, false)),
                Some((2, false)),
                Some((5, false)),
                Some((0, true)),
                Some((2, true))
            ]
        );

        let fail = SignatureIndex::new(entries, Repeat::Fail);
        let got: Vec<_> = (0..4).map(|_| served(&fail)).collect();
        assert_eq!(
            got,
            [Some((0, false)), Some((2, false)), Some((5, false)), None]
        );
        fail.rewind();
        assert_eq!(served(&fail), Some((0, false)));

        let unknown = sig(&chat("never recorded"), &r);
        assert_eq!(fail.next(&unknown), None);
        assert_eq!(fail.recorded_count(&unknown), 0);

        assert_eq!("cycle".parse::<Repeat>().unwrap(), Repeat::Cycle);
        assert!("sometimes".parse::<Repeat>().is_err());
    }

    #[test]
    fn closest_names_the_differing_field() {
        let r = rules();
        let recorded = [
            chat("What is the capital of France?"),
            chat("Tell me a joke"),
            {
                let mut b = chat("What is the capital of France?");
                b["temperature"] = json!(0.0);
                b["max_tokens"] = json!(100);
                b
            },
        ];
        let mut entries: Vec<(usize, Signature)> = recorded
            .iter()
            .enumerate()
            .map(|(i, b)| (i, sig(b, &r)))
            .collect();
        // An embeddings request on another path does not distract.
        let other = json!({"input": "What is the capital of Italy?", "model": "gpt-4o-mini"});
        entries.push((
            3,
            Signature::of(
                "POST",
                "api.openai.com",
                "/v1/embeddings",
                Body::Json(&other),
                &r,
            ),
        ));
        let index = SignatureIndex::new(entries, Repeat::Last);

        let requested = sig(&chat("What is the capital of Italy?"), &r);
        assert_eq!(index.next(&requested), None);
        let (exchange, diffs) = index.closest(requested.canonical()).unwrap();
        assert_eq!(exchange, 0);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(diffs[0].pointer, "/messages/0/content");
        assert_eq!(
            diffs[0].recorded,
            Some(json!("What is the capital of France?"))
        );
        assert_eq!(
            diffs[0].requested,
            Some(json!("What is the capital of Italy?"))
        );
        assert_eq!(
            diffs[0].to_string(),
            r#"/messages/0/content: recorded "What is the capital of France?", requested "What is the capital of Italy?""#
        );

        // An added field shows as absent on the recorded side.
        let mut extra = chat("Tell me a joke");
        extra["seed"] = json!(7);
        let (exchange, diffs) = index.closest(sig(&extra, &r).canonical()).unwrap();
        assert_eq!(exchange, 1);
        assert_eq!(
            diffs[0].to_string(),
            "/seed: recorded (absent), requested 7"
        );

        // No request on the same path: the same host is searched, and the path differs.
        let moved = Signature::of(
            "POST",
            "api.openai.com",
            "/v1/responses",
            Body::Json(&chat("Tell me a joke")),
            &r,
        );
        let (exchange, diffs) = index.closest(moved.canonical()).unwrap();
        assert_eq!(exchange, 1);
        assert_eq!(diffs[0].pointer, "path");

        let empty = SignatureIndex::new(Vec::new(), Repeat::Last);
        assert!(empty.closest(moved.canonical()).is_none());
    }

    #[test]
    fn large_index_lookup() {
        let r = rules();
        let signatures: Vec<(usize, Signature)> = (0..100_000)
            .map(|i| {
                let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("prompt {i}")}]});
                (i, sig(&body, &r))
            })
            .collect();
        let wanted = signatures[76_543].1.clone();
        let index = SignatureIndex::new(signatures, Repeat::Last);
        assert_eq!(index.len(), 100_000);
        assert_eq!(index.next(&wanted).map(|s| s.exchange), Some(76_543));
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
    fn hashed_text_is_the_json_array_of_the_parts() {
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

    #[test]
    fn rules_round_trip_through_toml_shaped_json() {
        let rules: MatchRules = serde_json::from_value(json!({
            "ignore_json_pointers": ["/x"],
            "wildcard_model": true,
            "mask": [{"pointer": "/messages/*/content", "pattern": "\\d+"}],
        }))
        .unwrap();
        assert!(rules.wildcard_model);
        assert_eq!(rules.mask[0].pattern, "\\d+");
        assert_eq!(rules.ignore_headers.len(), 0);
        assert!(serde_json::from_value::<MatchRules>(json!({"wildcard_modle": true})).is_err());
    }
}
