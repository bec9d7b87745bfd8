//! Recorded responses made ready to send, once, at start-up: the status and header map
//! checked and built, hop-by-hop headers (and HTTP/2 pseudo-headers) dropped,
//! `Content-Length` left for the server to recompute from the bytes actually sent, and
//! `Content-Encoding` made to describe those bytes (bodies are stored decoded, so it is
//! dropped unless the body is still in a coding replay cannot undo). What is left describes
//! the message alone, so an exchange recorded over HTTP/1.1 is served over HTTP/2 and the
//! other way round. Recorded trailers (gRPC's `grpc-status`) are checked the same way and
//! sent after the body. Server-sent events become one timed chunk per event, so replay can
//! pace them as recorded. Serving a hit then clones a header map (of fields kept for the
//! process's life, [`crate::interned`]) and an `Arc`.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
pub(crate) use llmsim_snapshot::model::is_hop_by_hop;
use llmsim_snapshot::model::{Body, Exchange, Headers};

use crate::interned;

/// Why a recorded response cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The status code is not a valid HTTP status (100 to 999).
    #[error("recorded status {status} is not a valid HTTP status code")]
    Status {
        /// The recorded status.
        status: u16,
    },
    /// A header name is not a valid HTTP field name.
    #[error("recorded header name {name:?} is not a valid HTTP field name")]
    HeaderName {
        /// The recorded name.
        name: String,
        /// Why `http` refused it.
        #[source]
        source: header::InvalidHeaderName,
    },
    /// A header value holds bytes HTTP does not allow (control characters, line breaks).
    #[error("recorded value of header {name:?} holds characters HTTP does not allow")]
    HeaderValue {
        /// The header's name.
        name: String,
        /// Why `http` refused it.
        #[source]
        source: header::InvalidHeaderValue,
    },
}

/// A chunk of a streamed body and when it was recorded, in ms from request start.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedChunk {
    /// Milliseconds from request start at which it arrived.
    pub offset_ms: f64,
    /// The bytes to send.
    pub bytes: Bytes,
}

/// A response body ready to send.
#[derive(Clone, Debug, PartialEq)]
pub enum PreparedBody {
    /// The whole body at once; its length becomes `Content-Length`.
    Full(Bytes),
    /// Server-sent events, one chunk per event (then any unterminated tail), or a
    /// streamed JSON array, one chunk per element, sent with chunked transfer coding
    /// at their offsets under the pace.
    Events {
        /// When the response head arrived (ms from request start), never after the
        /// first event.
        head_ms: f64,
        /// The chunks in order.
        chunks: Arc<[TimedChunk]>,
    },
}

/// A recorded response ready to send.
#[derive(Clone, Debug)]
pub struct PreparedResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers to send, in recorded order, hop-by-hop and length headers removed.
    pub headers: HeaderMap,
    /// The body.
    pub body: PreparedBody,
    /// The trailers to send after the body, in recorded order, if any were recorded.
    pub trailers: Option<HeaderMap>,
}

impl PreparedResponse {
    /// Prepares the response of `exchange`.
    pub fn new(exchange: &Exchange) -> Result<Self, PrepareError> {
        let response = &exchange.response;
        let status = StatusCode::from_u16(response.status).map_err(|_| PrepareError::Status {
            status: response.status,
        })?;
        let named_by_connection: Vec<String> = response
            .headers
            .get_all("connection")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        let mut headers = header_map(&response.headers, |lower| {
            is_hop_by_hop(lower)
                || named_by_connection.iter().any(|n| n == lower)
                || lower == "content-length"
                || lower == "content-encoding"
        })?;
        let trailers = header_map(&response.trailers, is_hop_by_hop)?;
        if let Some(coding) = response.body.wire_content_encoding() {
            let value =
                HeaderValue::from_str(coding).map_err(|source| PrepareError::HeaderValue {
                    name: "content-encoding".to_owned(),
                    source,
                })?;
            headers.insert(header::CONTENT_ENCODING, value);
        }
        let body = match &response.body {
            Body::Sse {
                events,
                unterminated,
                crlf,
                ..
            } => {
                let mut chunks: Vec<TimedChunk> = events
                    .iter()
                    .map(|e| TimedChunk {
                        offset_ms: e.offset_ms,
                        bytes: Bytes::from(e.wire_bytes(*crlf)),
                    })
                    .collect();
                if let Some(tail) = unterminated {
                    let last = chunks.last().map_or(0.0, |c| c.offset_ms);
                    chunks.push(TimedChunk {
                        offset_ms: exchange.duration_ms.max(last),
                        bytes: Bytes::from(tail.clone().into_bytes()),
                    });
                }
                let first = chunks.first().map_or(f64::INFINITY, |c| c.offset_ms);
                PreparedBody::Events {
                    head_ms: exchange.ttfb_ms.min(first),
                    chunks: chunks.into(),
                }
            }
            // A JSON array recorded element by element goes out the same way.
            other => match other.json_stream() {
                Some(pieces) => {
                    let chunks: Vec<TimedChunk> = pieces
                        .into_iter()
                        .map(|(offset_ms, bytes)| TimedChunk {
                            offset_ms,
                            bytes: Bytes::from(bytes),
                        })
                        .collect();
                    let first = chunks.first().map_or(f64::INFINITY, |c| c.offset_ms);
                    PreparedBody::Events {
                        head_ms: exchange.ttfb_ms.min(first),
                        chunks: chunks.into(),
                    }
                }
                None => PreparedBody::Full(Bytes::from(other.to_bytes())),
            },
        };
        Ok(Self {
            status,
            headers,
            body,
            trailers: (!trailers.is_empty()).then_some(trailers),
        })
    }

    /// The `Trailer` header announcing the trailers to an HTTP/1.1 client, which gets them
    /// only when announced.
    pub fn trailer_announcement(&self) -> Option<HeaderValue> {
        let trailers = self.trailers.as_ref()?;
        let names: Vec<&str> = trailers.keys().map(HeaderName::as_str).collect();
        HeaderValue::from_str(&names.join(", ")).ok()
    }
}

/// `fields` as a header map, in order, leaving out HTTP/2 pseudo-headers and the names
/// (lowercase) `skip` says; a name or value HTTP does not allow is an error. The fields are
/// [`interned`], so that serving them costs no reference counting.
fn header_map(fields: &Headers, skip: impl Fn(&str) -> bool) -> Result<HeaderMap, PrepareError> {
    let mut map = HeaderMap::with_capacity(fields.0.len());
    for (name, value) in fields.iter() {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with(':') || skip(&lower) {
            continue;
        }
        let header_name = HeaderName::from_bytes(lower.as_bytes()).map_err(|source| {
            PrepareError::HeaderName {
                name: name.to_owned(),
                source,
            }
        })?;
        let header_value = HeaderValue::from_bytes(value.trim().as_bytes()).map_err(|source| {
            PrepareError::HeaderValue {
                name: name.to_owned(),
                source,
            }
        })?;
        map.append(interned::name(&header_name), interned::value(&header_value));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmsim_snapshot::model::{JsonStyle, SseEvent};
    use serde_json::json;

    use crate::testutil::exchange;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    #[test]
    fn hop_by_hop_and_length_headers_are_dropped() {
        let mut ex = exchange("hi", json!({"ok": true}));
        ex.response.headers = headers(&[
            ("Content-Type", "application/json"),
            ("Connection", "keep-alive, X-Conn-Only"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "999"),
            ("Content-Encoding", "gzip"),
            ("Proxy-Authenticate", "Basic"),
            ("X-Conn-Only", "1"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-request-id", "req_1"),
        ]);
        ex.response.body = Body::Json {
            content_encoding: Some("gzip".into()),
            json: json!({"ok": true}),
            style: JsonStyle::default(),
            verbatim: None,
            offsets_ms: None,
        };
        let prepared = PreparedResponse::new(&ex).unwrap();
        let names: Vec<&str> = prepared.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "set-cookie", "x-request-id"]);
        assert_eq!(
            prepared
                .headers
                .get_all("set-cookie")
                .iter()
                .collect::<Vec<_>>(),
            ["a=1", "b=2"]
        );
        assert_eq!(
            prepared.body,
            PreparedBody::Full(Bytes::from_static(br#"{"ok":true}"#))
        );
    }

    #[test]
    fn encoded_bodies_keep_their_coding() {
        let mut ex = exchange("hi", json!({}));
        ex.response.headers = headers(&[("content-encoding", "gzip")]);
        ex.response.body = Body::Encoded {
            content_encoding: "compress".into(),
            base64: vec![1, 2, 3],
        };
        let prepared = PreparedResponse::new(&ex).unwrap();
        assert_eq!(prepared.headers["content-encoding"], "compress");
        assert_eq!(
            prepared.body,
            PreparedBody::Full(Bytes::from_static(&[1, 2, 3]))
        );
    }

    #[test]
    fn events_become_timed_chunks() {
        let mut ex = exchange("hi", json!({}));
        ex.ttfb_ms = 50.0;
        ex.duration_ms = 90.0;
        let event = |offset_ms, data: &str| SseEvent {
            offset_ms,
            event: None,
            data: data.into(),
            id: None,
            retry: None,
            wire: None,
        };
        ex.response.body = Body::Sse {
            content_encoding: None,
            crlf: false,
            events: vec![event(40.0, "a"), event(80.0, "[DONE]")],
            unterminated: Some("data: cut".into()),
        };
        let prepared = PreparedResponse::new(&ex).unwrap();
        let PreparedBody::Events { head_ms, chunks } = prepared.body else {
            panic!("not events");
        };
        assert!((head_ms - 40.0).abs() < f64::EPSILON);
        let got: Vec<(f64, &[u8])> = chunks.iter().map(|c| (c.offset_ms, &c.bytes[..])).collect();
        assert_eq!(
            got,
            [
                (40.0, &b"data: a\n\n"[..]),
                (80.0, b"data: [DONE]\n\n"),
                (90.0, b"data: cut")
            ]
        );
    }

    #[test]
    fn a_streamed_json_array_becomes_one_timed_chunk_per_element() {
        let mut ex = exchange("hi", json!({}));
        ex.ttfb_ms = 30.0;
        let wire: &[&[u8]] = &[
            b"[{\"n\": 1}\n",
            b",\r\n{\"n\": 2}\n",
            b",\r\n{\"n\": 3}\n]",
        ];
        let segments: Vec<(f64, &[u8])> = [35.0, 60.0, 95.0]
            .into_iter()
            .zip(wire.iter().copied())
            .collect();
        ex.response.body = Body::from_http(Some("application/json"), None, &segments).unwrap();
        let prepared = PreparedResponse::new(&ex).unwrap();
        let PreparedBody::Events { head_ms, chunks } = prepared.body else {
            panic!("not paced: {:?}", prepared.body);
        };
        assert!((head_ms - 30.0).abs() < f64::EPSILON);
        let got: Vec<(f64, &[u8])> = chunks.iter().map(|c| (c.offset_ms, &c.bytes[..])).collect();
        let want: Vec<(f64, &[u8])> = segments.clone();
        assert_eq!(got, want);
    }

    #[test]
    fn trailers_are_kept_and_pseudo_headers_dropped() {
        let mut ex = exchange("hi", json!({}));
        ex.response.headers = headers(&[(":status", "200"), ("content-type", "application/grpc")]);
        ex.response.trailers = headers(&[("grpc-status", "0"), ("Grpc-Message", "ok")]);
        let prepared = PreparedResponse::new(&ex).unwrap();
        let names: Vec<&str> = prepared.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
        let trailers = prepared.trailers.as_ref().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "ok");
        assert_eq!(
            prepared.trailer_announcement().unwrap(),
            "grpc-status, grpc-message"
        );
        ex.response.trailers = headers(&[]);
        let prepared = PreparedResponse::new(&ex).unwrap();
        assert!(prepared.trailers.is_none());
        assert!(prepared.trailer_announcement().is_none());
        ex.response.trailers = headers(&[("grpc-status", "bad\nvalue")]);
        assert!(matches!(
            PreparedResponse::new(&ex),
            Err(PrepareError::HeaderValue { .. })
        ));
    }

    #[test]
    fn invalid_recordings_are_reported() {
        let mut ex = exchange("hi", json!({}));
        ex.response.status = 42;
        assert!(matches!(
            PreparedResponse::new(&ex),
            Err(PrepareError::Status { status: 42 })
        ));
        ex.response.status = 200;
        ex.response.headers = headers(&[("bad name", "x")]);
        assert!(matches!(
            PreparedResponse::new(&ex),
            Err(PrepareError::HeaderName { .. })
        ));
        ex.response.headers = headers(&[("x-ok", "line\nbreak")]);
        let err = PreparedResponse::new(&ex).unwrap_err();
        assert!(err.to_string().contains("x-ok"), "{err}");
    }
}
