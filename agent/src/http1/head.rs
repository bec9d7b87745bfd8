//! Request and response heads: finding where a head ends without rescanning bytes
//! already seen, rejecting a stream that is not HTTP/1.x as soon as its first bytes
//! show it, parsing with httparse into owned values, and choosing the body framing of
//! RFC 9112 section 6.3.

use super::{Direction, Headers, Http1Error, MAX_HEAD_BYTES};

/// The request line of the HTTP/2 connection preface (RFC 9113 section 3.4).
const HTTP2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How many leading bytes of a head get the cheap "could this be HTTP" check on every
/// push, before the start line is complete and httparse can judge it.
const START_CHECK_BYTES: usize = 32;

/// Progress through one head that may arrive in many pieces.
#[derive(Debug, Default)]
pub(super) struct HeadScan {
    /// Bytes of the head already searched for its end: the search resumes here, so a
    /// head fed one byte at a time still costs linear time.
    scanned: usize,
    /// Offset of the first LF once seen: the start line is then complete.
    first_lf: Option<usize>,
    /// The complete start line has been validated (done once per head).
    start_line_checked: bool,
    /// Timestamp of the push that delivered the head's first byte.
    pub start_ns: Option<u64>,
}

impl HeadScan {
    /// Looks for the end of the head in `head`, which starts at the head's first byte
    /// (blank lines before it already skipped) and holds everything received since.
    /// Returns the head's length, blank line included, once it is complete.
    pub fn scan(
        &mut self,
        direction: Direction,
        head: &[u8],
        offset: u64,
    ) -> Result<Option<usize>, Http1Error> {
        check_start(direction, head, offset)?;
        let end = self.find_end(head);
        if !self.start_line_checked
            && let Some(lf) = self.first_lf
        {
            check_start_line(direction, head.get(..=lf).unwrap_or_default(), offset)?;
            self.start_line_checked = true;
        }
        match end {
            Some(len) if len <= MAX_HEAD_BYTES => Ok(Some(len)),
            None if head.len() <= MAX_HEAD_BYTES => Ok(None),
            _ => Err(Http1Error::HeadTooLarge {
                direction,
                offset,
                limit: MAX_HEAD_BYTES,
            }),
        }
    }

    /// Finds the blank line (`\n\n` or `\n\r\n`) that ends the head.
    fn find_end(&mut self, head: &[u8]) -> Option<usize> {
        let mut i = self.scanned;
        while let Some(found) = head
            .get(i..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let lf = i + found;
            self.first_lf.get_or_insert(lf);
            match (head.get(lf + 1), head.get(lf + 2)) {
                (Some(b'\n'), _) => return Some(lf + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
                // Cannot tell yet: look at this LF again when more bytes come.
                (None, _) | (Some(b'\r'), None) => {
                    self.scanned = lf;
                    return None;
                }
                _ => i = lf + 1,
            }
        }
        self.scanned = head.len();
        None
    }
}

/// Number of blank lines' bytes at the start of `data`. RFC 9112 section 2.2 lets a
/// recipient ignore empty lines before a request line; some servers send them too.
pub(super) fn skip_blank_lines(data: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match (data.get(i), data.get(i + 1)) {
            (Some(b'\n'), _) => i += 1,
            (Some(b'\r'), Some(b'\n')) => i += 2,
            _ => return i,
        }
    }
}

/// Rejects a head whose first bytes cannot start the expected message, so garbage fails
/// at once instead of after a megabyte of waiting for a blank line. Bounded cost.
fn check_start(direction: Direction, head: &[u8], offset: u64) -> Result<(), Http1Error> {
    let start = head
        .get(..head.len().min(START_CHECK_BYTES))
        .unwrap_or_default();
    let plausible = match direction {
        // A method token, then a space.
        Direction::Write => {
            let method_len = start.iter().take_while(|&&b| is_tchar(b)).count();
            match start.get(method_len) {
                None => true,
                Some(b' ') => method_len > 0,
                Some(_) => false,
            }
        }
        Direction::Read => {
            let n = start.len().min(5);
            start.get(..n) == b"HTTP/".get(..n)
        }
    };
    if plausible {
        Ok(())
    } else {
        Err(Http1Error::NotHttp {
            direction,
            offset,
            prefix: start.escape_ascii().to_string(),
        })
    }
}

/// Validates a complete start line (LF included) on its own.
fn check_start_line(direction: Direction, line: &[u8], offset: u64) -> Result<(), Http1Error> {
    let mut no_headers = [];
    let result = match direction {
        Direction::Write => {
            if line == HTTP2_PREFACE_LINE {
                return Err(Http1Error::Http2Preface);
            }
            config()
                .parse_request(&mut httparse::Request::new(&mut no_headers), line)
                .map(|_| ())
        }
        Direction::Read => config()
            .parse_response(&mut httparse::Response::new(&mut no_headers), line)
            .map(|_| ()),
    };
    result.map_err(|source| Http1Error::MalformedHead {
        direction,
        offset,
        source,
    })
}

/// Parser settings: lenient wherever that loses nothing, because we observe traffic a
/// real peer already accepted rather than guard a server.
fn config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true);
    config
}

/// Header slots for a head: never more fields than lines, and the head's size is bounded.
#[expect(
    clippy::naive_bytecount,
    reason = "heads are bounded and parsed once; not worth a crate"
)]
pub(super) fn header_slots(head: &[u8]) -> usize {
    head.iter().filter(|&&b| b == b'\n').count()
}

pub(super) fn owned_headers(fields: &[httparse::Header<'_>]) -> Headers {
    fields
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// A parsed request head.
#[derive(Debug)]
pub(super) struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Headers,
}

/// A parsed response head.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
}

pub(super) fn parse_request(head: &[u8], offset: u64) -> Result<RequestHead, Http1Error> {
    let direction = Direction::Write;
    let mut slots = vec![httparse::EMPTY_HEADER; header_slots(head)];
    let mut request = httparse::Request::new(&mut slots);
    match config().parse_request(&mut request, head) {
        Ok(httparse::Status::Complete(_)) => Ok(RequestHead {
            method: request.method.unwrap_or_default().to_owned(),
            target: request.path.unwrap_or_default().to_owned(),
            version: request.version.unwrap_or_default(),
            headers: owned_headers(request.headers),
        }),
        Ok(httparse::Status::Partial) => Err(Http1Error::UnterminatedHead { direction, offset }),
        Err(source) => Err(Http1Error::MalformedHead {
            direction,
            offset,
            source,
        }),
    }
}

pub(super) fn parse_response(head: &[u8], offset: u64) -> Result<ResponseHead, Http1Error> {
    let direction = Direction::Read;
    let mut slots = vec![httparse::EMPTY_HEADER; header_slots(head)];
    let mut response = httparse::Response::new(&mut slots);
    match config().parse_response(&mut response, head) {
        Ok(httparse::Status::Complete(_)) => Ok(ResponseHead {
            version: response.version.unwrap_or_default(),
            status: response.code.unwrap_or_default(),
            reason: response.reason.unwrap_or_default().to_owned(),
            headers: owned_headers(response.headers),
        }),
        Ok(httparse::Status::Partial) => Err(Http1Error::UnterminatedHead { direction, offset }),
        Err(source) => Err(Http1Error::MalformedHead {
            direction,
            offset,
            source,
        }),
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes (never zero: that is `None`).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes.
    UntilClose,
}

/// Request body framing (RFC 9112 section 6.3, rules 4 to 7).
pub(super) fn request_framing(headers: &Headers, offset: u64) -> Result<Framing, Http1Error> {
    if let Some(codings) = transfer_codings(headers) {
        // A request that is not chunked last has no knowable length: the server would
        // answer 400 and close, so the rest of the stream cannot be framed.
        return if ends_chunked(&codings) {
            Ok(Framing::Chunked)
        } else {
            Err(Http1Error::UnsupportedTransferEncoding {
                offset,
                value: codings,
            })
        };
    }
    Ok(content_length(Direction::Write, headers, offset)?.map_or(Framing::None, length))
}

/// Response body framing (RFC 9112 section 6.3, rules 1 to 3, 5 to 8), given the method
/// of the request it answers. Interim 1xx responses are handled by the caller.
pub(super) fn response_framing(
    method: &str,
    status: u16,
    headers: &Headers,
    offset: u64,
) -> Result<Framing, Http1Error> {
    let connect_ok = method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&status);
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || connect_ok
    {
        return Ok(Framing::None);
    }
    if let Some(codings) = transfer_codings(headers) {
        return Ok(if ends_chunked(&codings) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(content_length(Direction::Read, headers, offset)?.map_or(Framing::UntilClose, length))
}

fn length(n: u64) -> Framing {
    if n == 0 {
        Framing::None
    } else {
        Framing::Length(n)
    }
}

/// All `Transfer-Encoding` values joined with commas, if the header is present.
fn transfer_codings(headers: &Headers) -> Option<String> {
    let values: Vec<String> = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn ends_chunked(codings: &str) -> bool {
    codings
        .split(',')
        .map(str::trim)
        .rfind(|c| !c.is_empty())
        .is_some_and(|last| last.eq_ignore_ascii_case("chunked"))
}

/// The `Content-Length`, if present. Repeated headers and comma lists are accepted when
/// every value is the same number (RFC 9110 section 8.6); anything else is an error.
fn content_length(
    direction: Direction,
    headers: &Headers,
    offset: u64,
) -> Result<Option<u64>, Http1Error> {
    let mut found: Option<u64> = None;
    for (_, value) in headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
    {
        let invalid = || Http1Error::InvalidContentLength {
            direction,
            offset,
            value: String::from_utf8_lossy(value).into_owned(),
        };
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(invalid());
            }
            let n = part.iter().try_fold(0_u64, |acc, &d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            match (n, found) {
                (None, _) => return Err(invalid()),
                (Some(n), Some(previous)) if n != previous => return Err(invalid()),
                (Some(n), _) => found = Some(n),
            }
        }
    }
    Ok(found)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
