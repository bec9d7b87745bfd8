//! Message body decoding: Content-Length, chunked (RFC 9112 section 7.1) and
//! read-until-close. Each decoder is a state machine fed whatever slice arrived, so a
//! body split at any byte decodes the same, and every body byte is copied once.

use super::Headers;
use super::head::header_slots;

/// Longest chunk-size line (size plus extensions) accepted. Extensions carry nothing we
/// record; the bound only stops a garbage stream from being skipped as one endless line.
const MAX_CHUNK_LINE: usize = 64 * 1024;

/// Largest trailer section accepted, the same bound as a head.
const MAX_TRAILERS: usize = super::MAX_HEAD_BYTES;

/// What is wrong with a chunked body.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// A chunk-size line holds a byte that is neither a hex digit (or none came before
    /// it), whitespace, `;` starting an extension, nor the line end.
    #[error("invalid byte {byte:#04x} in chunk-size line")]
    InvalidSize {
        /// The offending byte.
        byte: u8,
    },
    /// A chunk size does not fit in 64 bits.
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    /// Chunk data is not followed by CRLF.
    #[error("chunk data followed by {byte:#04x} instead of CRLF")]
    MissingDataEnd {
        /// The byte found where CR or LF was expected.
        byte: u8,
    },
    /// A chunk-size line (with its extensions) is longer than the limit.
    #[error("chunk-size line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The trailer section is larger than the limit.
    #[error("trailer section larger than {limit} bytes")]
    TrailersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// httparse rejected the trailer section.
    #[error("malformed trailer section")]
    MalformedTrailers(#[source] httparse::Error),
    /// httparse still wanted bytes after the blank line that ends the trailer section.
    #[error("trailer section not terminated where a blank line was seen")]
    UnterminatedTrailers,
}

/// A [`ChunkError`] and where it happened, relative to the slice passed to `decode`.
#[derive(Debug)]
pub(super) struct ChunkFailure {
    /// Index in the input slice of the byte that failed.
    pub at: usize,
    /// What failed.
    pub error: ChunkError,
}

/// Outcome of one `decode` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Progress {
    /// Input bytes used. Less than the input only when the body ended.
    pub consumed: usize,
    /// The body is complete.
    pub done: bool,
}

/// How a body in progress is delimited, with the state needed to find its end.
#[derive(Debug)]
pub(super) enum BodyDecoder {
    /// `Content-Length`: this many bytes remain.
    Length { remaining: u64 },
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// No length: the body runs until the connection closes (responses only).
    UntilClose,
}

impl BodyDecoder {
    /// Appends the body bytes found in `input` to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, ChunkFailure> {
        match self {
            Self::Length { remaining } => {
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                out.extend_from_slice(input.get(..take).unwrap_or_default());
                *remaining -= super::to_u64(take);
                Ok(Progress {
                    consumed: take,
                    done: *remaining == 0,
                })
            }
            Self::Chunked(chunked) => chunked.decode(input, out),
            Self::UntilClose => {
                out.extend_from_slice(input);
                Ok(Progress {
                    consumed: input.len(),
                    done: false,
                })
            }
        }
    }

    /// Trailer fields of a finished chunked body (empty for other framings).
    pub fn take_trailers(&mut self) -> Headers {
        match self {
            Self::Chunked(chunked) => std::mem::take(&mut chunked.trailers),
            Self::Length { .. } | Self::UntilClose => Vec::new(),
        }
    }
}

/// Where a chunked decoder is inside the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size; `digits` says whether any came yet.
    Size { value: u64, digits: bool },
    /// After the digits: optional whitespace, then `;` or the line end.
    AfterSize { value: u64 },
    /// Inside chunk extensions, which are skipped up to the line end.
    Extension { value: u64 },
    /// Saw the CR ending a size line; the LF must follow.
    SizeLf { value: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// After chunk data: CRLF (or a bare LF) must follow.
    DataCr,
    /// Saw the CR after chunk data; the LF must follow.
    DataLf,
    /// After the last chunk: collecting the trailer section up to its blank line.
    Trailers,
    /// The body is complete.
    Done,
}

/// Decoder for `Transfer-Encoding: chunked`.
#[derive(Debug)]
pub(super) struct Chunked {
    state: State,
    /// Length of the chunk-size line so far, against [`MAX_CHUNK_LINE`].
    line_len: usize,
    /// The trailer section collected so far, parsed once its blank line arrives.
    trailer: Vec<u8>,
    /// Parsed trailer fields, once the body is done.
    trailers: Headers,
}

impl Chunked {
    pub fn new() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: false,
            },
            line_len: 0,
            trailer: Vec::new(),
            trailers: Vec::new(),
        }
    }

    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, ChunkFailure> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Done {
                break;
            }
            if let State::Data { remaining } = self.state {
                // Bulk copy: the one place large amounts of bytes flow.
                let rest = input.get(i..).unwrap_or_default();
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                out.extend_from_slice(rest.get(..take).unwrap_or_default());
                i += take;
                let remaining = remaining - super::to_u64(take);
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                continue;
            }
            let byte = input.get(i).copied().unwrap_or_default();
            self.step(byte)
                .map_err(|error| ChunkFailure { at: i, error })?;
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    /// Advances over one byte outside chunk data.
    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        if matches!(
            self.state,
            State::Size { .. }
                | State::AfterSize { .. }
                | State::Extension { .. }
                | State::SizeLf { .. }
        ) {
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(ChunkError::LineTooLong {
                    limit: MAX_CHUNK_LINE,
                });
            }
        }
        self.state = match (self.state, byte) {
            (State::Size { value, .. }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                if value > u64::MAX >> 4 {
                    return Err(ChunkError::SizeOverflow);
                }
                State::Size {
                    value: value << 4 | hex_value(byte),
                    digits: true,
                }
            }
            (State::Size { digits: false, .. }, _) => return Err(ChunkError::InvalidSize { byte }),
            (State::Size { value, .. } | State::AfterSize { value }, b' ' | b'\t') => {
                State::AfterSize { value }
            }
            (State::Size { value, .. } | State::AfterSize { value }, b';') => {
                State::Extension { value }
            }
            (State::Size { value, .. } | State::AfterSize { value }, b'\r') => {
                State::SizeLf { value }
            }
            (
                State::Size { value, .. }
                | State::AfterSize { value }
                | State::Extension { value }
                | State::SizeLf { value },
                b'\n',
            ) => self.end_size_line(value),
            (State::Extension { value }, _) => State::Extension { value },
            (State::Size { .. } | State::AfterSize { .. } | State::SizeLf { .. }, _) => {
                return Err(ChunkError::InvalidSize { byte });
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataCr | State::DataLf, b'\n') => State::Size {
                value: 0,
                digits: false,
            },
            (State::DataCr | State::DataLf, _) => return Err(ChunkError::MissingDataEnd { byte }),
            (State::Trailers, _) => self.trailer_byte(byte)?,
            // `decode` never steps in these states.
            (state @ (State::Data { .. } | State::Done), _) => state,
        };
        Ok(())
    }

    fn end_size_line(&mut self, value: u64) -> State {
        self.line_len = 0;
        if value == 0 {
            State::Trailers
        } else {
            State::Data { remaining: value }
        }
    }

    /// Collects the trailer section; parses it when its blank line completes.
    fn trailer_byte(&mut self, byte: u8) -> Result<State, ChunkError> {
        if self.trailer.len() >= MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLarge {
                limit: MAX_TRAILERS,
            });
        }
        self.trailer.push(byte);
        let t = &self.trailer;
        let ended = t == b"\n" || t == b"\r\n" || t.ends_with(b"\n\n") || t.ends_with(b"\n\r\n");
        if !ended {
            return Ok(State::Trailers);
        }
        if t.len() > 2 {
            let mut slots = vec![httparse::EMPTY_HEADER; header_slots(t)];
            match httparse::parse_headers(t, &mut slots) {
                Ok(httparse::Status::Complete((_, fields))) => {
                    self.trailers = super::head::owned_headers(fields);
                }
                Ok(httparse::Status::Partial) => return Err(ChunkError::UnterminatedTrailers),
                Err(e) => return Err(ChunkError::MalformedTrailers(e)),
            }
        }
        self.trailer = Vec::new();
        Ok(State::Done)
    }
}

fn hex_value(byte: u8) -> u64 {
    let v = match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => 0,
    };
    u64::from(v)
}
