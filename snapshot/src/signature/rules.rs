//! The match rules: the `[match]` section of a snapshot's `llmsim.toml`
//! ([`MatchRules`]), the defaults every signature applies (volatile body fields, the
//! `key` query parameter), JSON-pointer syntax, and the rules compiled once into pointer
//! tries, regexes and header globs ([`CompiledRules`]). [`SignatureError`] is the
//! error of the whole signature module.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::trie::{PointerTrie, Segment};

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
    /// Checks and compiles the rules, once, for
    /// [`Signature::of`](super::Signature::of).
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
    /// Body fields left out.
    pub(super) ignore: PointerTrie,
    /// Where each mask rule applies; terminals are indexes into `patterns`.
    pub(super) mask: PointerTrie,
    /// The mask rules' patterns.
    pub(super) patterns: Vec<Regex>,
    /// Headers that take part.
    pub(super) include_headers: GlobSet,
    /// Headers left out even when included.
    pub(super) ignore_headers: GlobSet,
    /// Query parameters left out, besides [`ALWAYS_DROPPED_QUERY`].
    pub(super) ignore_query: Vec<String>,
    /// [`MatchRules::wildcard_model`].
    pub(super) wildcard_model: bool,
}

impl CompiledRules {
    pub(super) fn keeps_header(&self, name: &str) -> bool {
        self.include_headers.is_match(name) && !self.ignore_headers.is_match(name)
    }

    pub(super) fn keeps_query(&self, name: &str) -> bool {
        !ALWAYS_DROPPED_QUERY.contains(&name) && !self.ignore_query.iter().any(|q| q == name)
    }
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
pub(super) fn escape_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::signature::test_support::{chat, rules, sig, tool_turns};
    use crate::signature::{Repeat, Served, SignatureIndex};

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
