//! HTTP/2 reassembly for one TLS connection seen from the client. It owns turning the
//! ordered plaintext chunks the agent reads at `SSL_write` (the client's frames) and
//! `SSL_read` (the server's) into one exchange per stream, the same
//! [`Exchange`](crate::http1::Exchange) the HTTP/1.1 reassembler produces: frames split
//! across or packed into calls, HEADERS with CONTINUATION, padding, DATA, trailers,
//! `RST_STREAM` and GOAWAY; SETTINGS for the header table size; PING, `WINDOW_UPDATE` and
//! PRIORITY checked and passed over. Header blocks are decoded with a dynamic table per
//! direction (`loona-hpack`). Server push is not recorded: `PUSH_PROMISE` blocks and the
//! pushed streams' HEADERS are decoded only to keep the tables in step. A connection the
//! capture joined in its middle is decoded as far as the unknown table state allows, and
//! each exchange that lost fields to it is flagged. Like the HTTP/1.1 reassembler it does
//! no decompression, redaction or provider interpretation.

mod connection;
mod frame;
mod hpack;
#[cfg(test)]
mod tests;

pub use connection::Http2Connection;
pub use frame::PREFACE;

use crate::http1::{Direction, Headers, message, to_u64};

/// Largest header block (a HEADERS or `PUSH_PROMISE` frame with its CONTINUATIONs)
/// accepted: the limit HTTP/1.1 heads have.
pub const MAX_HEADER_BLOCK: usize = crate::http1::MAX_HEAD_BYTES;

/// Why a connection's bytes cannot be read as HTTP/2. After one, the connection is
/// poisoned: see [`Http2Connection::push`]. Offsets count the bytes of one direction
/// since the capture first saw the connection (the preface included).
#[derive(Debug, thiserror::Error)]
pub enum Http2Error {
    /// A frame header or payload breaks the framing rules.
    #[error("malformed HTTP/2 {kind} frame in the {} stream at offset {offset}: {what}", message(*.direction))]
    MalformedFrame {
        direction: Direction,
        /// Stream offset of the frame's header.
        offset: u64,
        /// The frame type (`DATA`, `HEADERS`, ...).
        kind: &'static str,
        /// What is wrong.
        what: &'static str,
    },
    /// A frame arrived where the protocol forbids it (a CONTINUATION with no header
    /// block open, another frame inside one, DATA before a stream's HEADERS).
    #[error("unexpected HTTP/2 {kind} frame for stream {stream} in the {} stream at offset {offset}: {what}", message(*.direction))]
    UnexpectedFrame {
        direction: Direction,
        /// Stream offset of the frame's header.
        offset: u64,
        /// The frame type.
        kind: &'static str,
        /// The stream it names.
        stream: u32,
        /// Why it cannot be there.
        what: &'static str,
    },
    /// A frame names a stream the client never opened.
    #[error("HTTP/2 {kind} frame for unknown stream {stream} in the {} stream at offset {offset}", message(*.direction))]
    UnknownStream {
        direction: Direction,
        /// Stream offset of the frame's header.
        offset: u64,
        /// The frame type.
        kind: &'static str,
        /// The stream it names.
        stream: u32,
    },
    /// A header block could not be decoded.
    #[error("HPACK error in the {} header block of stream {stream}", message(*.direction))]
    Hpack {
        direction: Direction,
        /// The stream the block belongs to.
        stream: u32,
        #[source]
        source: loona_hpack::decoder::DecoderError,
    },
    /// A header block is larger than [`MAX_HEADER_BLOCK`].
    #[error("{} header block of stream {stream} is larger than {limit} bytes", message(*.direction))]
    HeaderBlockTooLarge {
        direction: Direction,
        /// The stream the block belongs to.
        stream: u32,
        /// The limit, [`MAX_HEADER_BLOCK`].
        limit: usize,
    },
    /// The bytes after the client preface's place are not the preface.
    #[error("the client's first bytes are not the HTTP/2 connection preface")]
    BadPreface,
}

/// Whether `bytes`, the first a client wrote on a connection, are (the start of) the
/// HTTP/2 connection preface.
#[must_use]
pub fn starts_with_preface(bytes: &[u8]) -> bool {
    let n = bytes.len().min(PREFACE.len());
    n > 0 && bytes.get(..n) == PREFACE.get(..n)
}

/// Whether `bytes`, the first a client read on a connection, are the server's connection
/// preface: a SETTINGS frame that is not an acknowledgement. A server sends it as soon as
/// the TLS handshake is done, so a client can read it before its own first write
/// (carrying the client preface) completes.
#[must_use]
pub fn starts_with_server_preface(bytes: &[u8]) -> bool {
    frame::starts_with_server_preface(bytes)
}

/// Whether `bytes`, the first seen on a connection the capture joined in its middle,
/// start with what an HTTP/2 peer could have sent: a frame header of a known type and
/// a length within the default maximum frame size. HTTP/1.x text never does.
#[must_use]
pub fn could_start_frame(bytes: &[u8]) -> bool {
    frame::could_start_frame(bytes)
}

/// The incomplete reason of an exchange that lost `withheld` fields of its `direction`'s
/// header blocks to table state from before the capture began.
fn withheld_reason(direction: Direction, withheld: usize) -> String {
    format!(
        "{withheld} {} header field(s) refer to HPACK table entries from before the capture began and are left out",
        message(direction)
    )
}
