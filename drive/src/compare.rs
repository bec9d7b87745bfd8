//! Comparing an answer with the recorded one: the status, the headers (less the
//! [`CompareRules`] ignored ones) and the body, JSON field by field with each field's
//! pointer (less the ignored pointers), text line by line, anything else byte by byte.
//! Each [`Difference`] renders as a readable block.

use std::fmt;

use bytes::Bytes;
use http::HeaderMap;
use llmsim_snapshot::config::CompareRules;
use llmsim_snapshot::model::{Body, Headers, Response};
use serde_json::Value;
use similar::TextDiff;

/// Why the `[compare]` rules cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A `json_pointers` entry is not an RFC 6901 pointer.
    #[error("[compare] json_pointers: {pointer:?} is not a JSON pointer (it starts with /)")]
    Pointer {
        /// The entry.
        pointer: String,
    },
}

/// The `[compare]` rules, ready to apply.
#[derive(Clone, Debug, Default)]
pub struct Comparer {
    rules: CompareRules,
    /// Each ignored pointer's unescaped segments; `*` matches any one segment.
    ignored: Vec<Vec<String>>,
}

/// A recorded answer, with its body's bytes as replay would send them, so that an
/// answer with the same bytes is known equal without decoding it.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    /// The recorded response.
    pub response: Response,
    /// Its body's bytes ([`Body::to_bytes`]).
    pub bytes: Bytes,
}

impl Expected {
    /// The expected answer `response`.
    pub fn new(response: Response) -> Self {
        let bytes = Bytes::from(response.body.to_bytes());
        Self { response, bytes }
    }
}

/// One way in which an answer differs from the recorded one.
#[derive(Clone, Debug, PartialEq)]
pub enum Difference {
    /// The status code.
    Status {
        /// The recorded status.
        recorded: u16,
        /// The status the app answered.
        replayed: u16,
    },
    /// A header, present on one side only or with another value (repeated headers
    /// joined with `, `).
    Header {
        /// The header name, lower case.
        name: String,
        /// The recorded value.
        recorded: Option<String>,
        /// The value the app sent.
        replayed: Option<String>,
    },
    /// A JSON field, present on one side only or with another value.
    Json {
        /// Its RFC 6901 pointer (empty for the whole document).
        pointer: String,
        /// The recorded value.
        recorded: Option<Value>,
        /// The value the app sent.
        replayed: Option<Value>,
    },
    /// A text body: the unified line diff.
    Text {
        /// The diff, `-` recorded and `+` replayed lines.
        diff: String,
    },
    /// A binary body.
    Bytes {
        /// The recorded length.
        recorded: usize,
        /// The length the app sent.
        replayed: usize,
        /// The offset of the first byte that differs.
        first: usize,
    },
}

impl Comparer {
    /// Checks the rules' pointers.
    pub fn new(rules: CompareRules) -> Result<Self, CompareError> {
        let ignored = rules
            .json_pointers
            .iter()
            .map(|pointer| {
                if pointer.is_empty() {
                    return Ok(Vec::new());
                }
                let Some(rest) = pointer.strip_prefix('/') else {
                    return Err(CompareError::Pointer {
                        pointer: pointer.clone(),
                    });
                };
                Ok(rest
                    .split('/')
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect())
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules, ignored })
    }

    /// Every difference between the recorded answer and the app's (`status`, `headers`,
    /// and its body bytes as received).
    pub fn compare(
        &self,
        expected: &Expected,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Vec<Difference> {
        let recorded = &expected.response;
        let mut out = Vec::new();
        if recorded.status != status {
            out.push(Difference::Status {
                recorded: recorded.status,
                replayed: status,
            });
        }
        self.compare_headers(&recorded.headers, headers, &mut out);
        if body == expected.bytes && !headers.contains_key(http::header::CONTENT_ENCODING) {
            return out;
        }
        let header =
            |name: http::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let replayed = Body::from_http(
            header(http::header::CONTENT_TYPE),
            header(http::header::CONTENT_ENCODING),
            &[(0.0, body)],
        )
        .unwrap_or_else(|_| Body::raw(None, body.to_vec()));
        self.compare_bodies(&recorded.body, &replayed, &mut out);
        out
    }

    fn compare_headers(&self, recorded: &Headers, replayed: &HeaderMap, out: &mut Vec<Difference>) {
        let mut names: Vec<String> = Vec::new();
        let recorded_names = recorded.iter().map(|(n, _)| n.to_ascii_lowercase());
        let replayed_names = replayed.keys().map(|n| n.as_str().to_owned());
        for name in recorded_names.chain(replayed_names) {
            if !self.rules.ignores_header(&name) && !names.contains(&name) {
                names.push(name);
            }
        }
        for name in names {
            let joined = |values: Vec<&str>| (!values.is_empty()).then(|| values.join(", "));
            let was = joined(recorded.get_all(&name).collect());
            let now = joined(
                replayed
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.to_str().unwrap_or("(not UTF-8)"))
                    .collect(),
            );
            if was != now {
                out.push(Difference::Header {
                    name,
                    recorded: was,
                    replayed: now,
                });
            }
        }
    }

    fn compare_bodies(&self, recorded: &Body, replayed: &Body, out: &mut Vec<Difference>) {
        if let (Some(was), Some(now)) = (recorded.json(), replayed.json()) {
            self.compare_json(&mut Vec::new(), Some(was), Some(now), out);
            return;
        }
        let (was, now) = (recorded.to_bytes(), replayed.to_bytes());
        if was == now {
            return;
        }
        match (std::str::from_utf8(&was), std::str::from_utf8(&now)) {
            (Ok(was), Ok(now)) => out.push(Difference::Text {
                diff: TextDiff::from_lines(was, now)
                    .unified_diff()
                    .context_radius(2)
                    .header("recorded", "replayed")
                    .to_string(),
            }),
            _ => out.push(Difference::Bytes {
                recorded: was.len(),
                replayed: now.len(),
                first: was
                    .iter()
                    .zip(&now)
                    .position(|(a, b)| a != b)
                    .unwrap_or(was.len().min(now.len())),
            }),
        }
    }

    fn is_ignored(&self, path: &[String]) -> bool {
        self.ignored.iter().any(|pattern| {
            pattern.len() == path.len() && pattern.iter().zip(path).all(|(p, s)| p == "*" || p == s)
        })
    }

    fn compare_json(
        &self,
        path: &mut Vec<String>,
        was: Option<&Value>,
        now: Option<&Value>,
        out: &mut Vec<Difference>,
    ) {
        if self.is_ignored(path) || was == now {
            return;
        }
        match (was, now) {
            (Some(Value::Object(was)), Some(Value::Object(now))) => {
                for key in was
                    .keys()
                    .chain(now.keys().filter(|k| !was.contains_key(*k)))
                {
                    path.push(key.clone());
                    self.compare_json(path, was.get(key), now.get(key), out);
                    path.pop();
                }
            }
            (Some(Value::Array(was)), Some(Value::Array(now))) => {
                for i in 0..was.len().max(now.len()) {
                    path.push(i.to_string());
                    self.compare_json(path, was.get(i), now.get(i), out);
                    path.pop();
                }
            }
            _ => out.push(Difference::Json {
                pointer: path.iter().fold(String::new(), |mut pointer, segment| {
                    pointer.push('/');
                    pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
                    pointer
                }),
                recorded: was.cloned(),
                replayed: now.cloned(),
            }),
        }
    }
}

/// A JSON value on one line, or `(missing)`.
fn json_or_missing(value: Option<&Value>) -> String {
    value.map_or_else(|| "(missing)".to_owned(), Value::to_string)
}

impl fmt::Display for Difference {
    /// One block: a heading line, then `- recorded` and `+ replayed` lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { recorded, replayed } => {
                write!(f, "status\n  - {recorded}\n  + {replayed}")
            }
            Self::Header {
                name,
                recorded,
                replayed,
            } => {
                let show = |v: &Option<String>| v.as_deref().unwrap_or("(missing)").to_owned();
                write!(
                    f,
                    "header {name}\n  - {}\n  + {}",
                    show(recorded),
                    show(replayed)
                )
            }
            Self::Json {
                pointer,
                recorded,
                replayed,
            } => {
                let pointer = if pointer.is_empty() {
                    "(whole document)"
                } else {
                    pointer
                };
                write!(
                    f,
                    "body {pointer}\n  - {}\n  + {}",
                    json_or_missing(recorded.as_ref()),
                    json_or_missing(replayed.as_ref())
                )
            }
            Self::Text { diff } => {
                write!(f, "body (text)")?;
                for line in diff.lines() {
                    write!(f, "\n  {line}")?;
                }
                Ok(())
            }
            Self::Bytes {
                recorded,
                replayed,
                first,
            } => write!(
                f,
                "body (binary): {recorded} bytes recorded, {replayed} replayed, first difference at byte {first}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(status: u16, headers: &[(&str, &str)], body: Body) -> Expected {
        Expected::new(Response {
            status,
            headers: headers.iter().copied().collect(),
            body,
            trailers: Headers::default(),
        })
    }

    fn json_body(value: &Value) -> Body {
        Body::compact_json(value.clone())
    }

    fn header_map(headers: &[(&'static str, &'static str)]) -> HeaderMap {
        headers
            .iter()
            .map(|(n, v)| {
                (
                    http::header::HeaderName::from_static(n),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn json_fields_differ_by_pointer_and_ignored_ones_do_not() {
        let comparer = Comparer::new(CompareRules {
            headers: Vec::new(),
            json_pointers: vec!["/elapsed_ms".into(), "/calls/*/ms".into()],
        })
        .unwrap();
        let recorded = response(
            200,
            &[("Content-Type", "application/json"), ("Date", "Mon")],
            json_body(
                &json!({"a/b": {"x": 1}, "list": [1, 2], "elapsed_ms": 3, "calls": [{"ms": 1}]}),
            ),
        );
        let body = json!({"a/b": {"x": 2}, "list": [1], "elapsed_ms": 9, "calls": [{"ms": 5}], "new": true});
        let headers = header_map(&[
            ("content-type", "application/json"),
            ("date", "Tue"),
            ("x-new", "1"),
        ]);
        let found = comparer.compare(&recorded, 502, &headers, body.to_string().as_bytes());
        assert_eq!(
            found,
            vec![
                Difference::Status {
                    recorded: 200,
                    replayed: 502
                },
                Difference::Header {
                    name: "x-new".into(),
                    recorded: None,
                    replayed: Some("1".into())
                },
                Difference::Json {
                    pointer: "/a~1b/x".into(),
                    recorded: Some(json!(1)),
                    replayed: Some(json!(2))
                },
                Difference::Json {
                    pointer: "/list/1".into(),
                    recorded: Some(json!(2)),
                    replayed: None
                },
                Difference::Json {
                    pointer: "/new".into(),
                    recorded: None,
                    replayed: Some(json!(true))
                },
            ]
        );
        assert_eq!(found[2].to_string(), "body /a~1b/x\n  - 1\n  + 2");
        assert_eq!(found[3].to_string(), "body /list/1\n  - 2\n  + (missing)");
        let same = json!({"a/b": {"x": 1}, "list": [1, 2], "elapsed_ms": 7, "calls": [{"ms": 2}]});
        let headers = header_map(&[("content-type", "application/json"), ("server", "x")]);
        assert_eq!(
            comparer.compare(&recorded, 200, &headers, same.to_string().as_bytes()),
            vec![]
        );
    }

    #[test]
    fn text_bodies_differ_by_lines_and_binary_by_bytes() {
        let comparer = Comparer::default();
        let recorded = response(
            200,
            &[],
            Body::Text {
                content_encoding: None,
                text: "one\ntwo\nthree\n".into(),
            },
        );
        let found = comparer.compare(&recorded, 200, &HeaderMap::new(), b"one\n2\nthree\n");
        let [Difference::Text { diff }] = found.as_slice() else {
            panic!("{found:?}")
        };
        assert!(diff.contains("\n-two\n+2\n"), "{diff}");
        let recorded = response(200, &[], Body::raw(None, vec![0xff, 0, 1]));
        assert_eq!(
            comparer.compare(&recorded, 200, &HeaderMap::new(), &[0xff, 0, 2, 3]),
            vec![Difference::Bytes {
                recorded: 3,
                replayed: 4,
                first: 2
            }]
        );
        assert!(
            Comparer::new(CompareRules {
                headers: vec![],
                json_pointers: vec!["x".into()]
            })
            .is_err()
        );
    }
}
