//! HTTP/1.x reassembly for one TLS connection seen from the client. It owns turning the
//! ordered plaintext chunks the agent reads at `SSL_write` (requests) and `SSL_read`
//! (responses) into complete request/response exchanges: heads split anywhere or packed
//! many to a chunk, keep-alive and pipelining, Content-Length, chunked and close-delimited
//! bodies, interim 1xx responses, per-read body timing for SSE, gaps where the kernel
//! dropped data, and rejecting streams that are not HTTP/1.x (HTTP/2 among them). It does
//! no decompression, redaction or provider interpretation; that happens downstream.

mod body;
mod connection;
mod head;
#[cfg(test)]
mod tests;

pub use body::ChunkError;
pub use connection::Http1Connection;
/// Which way bytes flowed, from the client's point of view (`Write`: requests,
/// `Read`: responses): the type the kernel's data events carry.
pub use llmsim_ebpf_common::Direction;

/// Largest head (start line plus fields) accepted; real LLM API heads are a few KiB.
pub const MAX_HEAD_BYTES: usize = 1 << 20;

/// Header fields in arrival order: name as sent, raw value bytes.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The kind of message flowing `direction`: the client writes requests and
/// reads responses.
pub(crate) fn message(direction: Direction) -> &'static str {
    match direction {
        Direction::Write => "request",
        Direction::Read => "response",
    }
}

/// A request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (usually origin-form: path and query).
    pub target: String,
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0. HTTP/2 exchanges leave it 0: their
    /// version is their connection's (`ConnectionExchange::http_version`).
    pub version: u8,
    pub headers: Headers,
    /// The body with any chunked coding removed (content codings such as gzip are kept).
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Headers,
    /// Timestamp of the write that delivered the head's first byte.
    pub start_ns: u64,
    /// Timestamp of the write that delivered the last byte (the last one seen, if incomplete).
    pub end_ns: u64,
}

/// The final response to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0. HTTP/2 exchanges leave it 0: their
    /// version is their connection's (`ConnectionExchange::http_version`).
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    /// The body with any chunked coding removed, one segment per read that carried body
    /// bytes, with that read's timestamp: SSE event timing comes from here. Reads that
    /// carried only framing are omitted.
    pub body_segments: Vec<(u64, Vec<u8>)>,
    /// Trailer fields of a chunked body.
    pub trailers: Headers,
    /// Timestamp of the read that delivered the final response head's first byte
    /// (interim 1xx responses before it do not count).
    pub first_byte_ns: u64,
    /// Timestamp of the read that delivered the last byte; for a body delimited by the
    /// connection closing, the timestamp given to [`Http1Connection::finish`].
    pub end_ns: u64,
    /// Statuses of interim 1xx responses that preceded this one, such as 100 Continue.
    pub interim: Vec<u16>,
}

impl Request {
    /// The first value of a header, matched case-insensitively.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

impl Response {
    /// The first value of a header, matched case-insensitively.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The whole body: all segments concatenated.
    #[must_use]
    pub fn body(&self) -> Vec<u8> {
        self.body_segments
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect()
    }
}

fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// The incomplete reason of a response cut off by the connection's end while
/// its body was being read (as when a client stops reading a finished stream).
pub const ENDED_IN_RESPONSE_BODY: &str = "connection ended inside the response body";

/// The incomplete reason of an exchange whose bytes flowing `direction` (when
/// it is known) did not all arrive, for the reason `why`: `response bytes lost:
/// …`, or `bytes lost: …` when the direction is unknown.
pub fn lost_reason(direction: Option<Direction>, why: &str) -> String {
    match direction {
        Some(direction) => format!("{} bytes lost: {why}", message(direction)),
        None => format!("bytes lost: {why}"),
    }
}

/// A request paired with its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub request: Request,
    /// The final response; `None` if none was seen (or its head was lost).
    pub response: Option<Response>,
    /// Why the exchange is not whole, if it is not: lost bytes, or the connection ending
    /// mid-message. Parts that did arrive are still filled in.
    pub incomplete: Option<String>,
}

/// Why a connection's bytes cannot be read as HTTP/1.x. After one, the connection is
/// poisoned: see [`Http1Connection::push`]. Offsets count the bytes pushed in one
/// direction since the connection began (bytes lost in gaps are not counted).
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    /// The client sent the HTTP/2 connection preface (`PRI * HTTP/2.0`): the connection
    /// speaks HTTP/2, which this module does not decode.
    #[error("the client sent the HTTP/2 connection preface: this connection is HTTP/2")]
    Http2Preface,
    /// The bytes where a head should begin cannot start an HTTP/1.x message.
    #[error("{} stream at offset {offset} is not HTTP/1.x; it starts with \"{prefix}\"", message(*.direction))]
    NotHttp {
        direction: Direction,
        /// Stream offset in this direction where the head should have started.
        offset: u64,
        /// The first bytes found there, escaped (at most 32 bytes).
        prefix: String,
    },
    /// httparse rejected a head.
    #[error("malformed {} head at offset {offset}", message(*.direction))]
    MalformedHead {
        direction: Direction,
        /// Stream offset of the head.
        offset: u64,
        #[source]
        source: httparse::Error,
    },
    /// httparse still wanted bytes after the blank line that ends a head.
    #[error("{} head at offset {offset} not terminated where a blank line was seen", message(*.direction))]
    UnterminatedHead {
        direction: Direction,
        /// Stream offset of the head.
        offset: u64,
    },
    /// No blank line ended a head within the limit.
    #[error("{} head at offset {offset} is larger than {limit} bytes", message(*.direction))]
    HeadTooLarge {
        direction: Direction,
        /// Stream offset of the head.
        offset: u64,
        /// The limit, [`MAX_HEAD_BYTES`].
        limit: usize,
    },
    /// `Content-Length` is not a decimal number, or several values differ.
    #[error("invalid Content-Length {value:?} in {} head at offset {offset}", message(*.direction))]
    InvalidContentLength {
        direction: Direction,
        /// Stream offset of the head.
        offset: u64,
        /// The offending header value (lossy UTF-8).
        value: String,
    },
    /// A request's `Transfer-Encoding` does not end in `chunked`, so its length cannot be
    /// known (RFC 9112 section 6.3, rule 4).
    #[error(
        "request at offset {offset} has Transfer-Encoding {value:?}, which does not end in chunked"
    )]
    UnsupportedTransferEncoding {
        /// Stream offset of the request head.
        offset: u64,
        /// All Transfer-Encoding values, comma-joined.
        value: String,
    },
    /// A chunked body is malformed.
    #[error("invalid chunked {} body at offset {offset}", message(*.direction))]
    InvalidChunkedBody {
        direction: Direction,
        /// Stream offset of the offending byte.
        offset: u64,
        #[source]
        source: ChunkError,
    },
    /// Response bytes arrived while no request awaited a response: a server-side
    /// connection (we see its requests as reads) or lost request data.
    #[error("response bytes at read offset {offset} with no request pending")]
    UnexpectedResponse {
        /// Read-stream offset of the bytes.
        offset: u64,
    },
}

/// Whether the first bytes a client wrote on a connection look like an HTTP/1.x request:
/// a standard method, a space, and (if the line is complete) ` HTTP/1.0` or ` HTTP/1.1`
/// at its end. Custom methods answer `false` here although the parser accepts any token;
/// the HTTP/2 preface (`PRI * HTTP/2.0`) answers `false`.
#[must_use]
pub fn looks_like_http1_request(first_bytes: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"PATCH ",
        b"HEAD ",
        b"OPTIONS ",
        b"CONNECT ",
        b"TRACE ",
    ];
    if !METHODS.iter().any(|m| first_bytes.starts_with(m)) {
        return false;
    }
    let lf = first_bytes.iter().position(|&b| b == b'\n');
    let line = first_bytes
        .get(..lf.unwrap_or(first_bytes.len()))
        .unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return false;
    }
    lf.is_none() || line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")
}

/// Lossless on every target we build for; saturates otherwise.
pub(crate) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
