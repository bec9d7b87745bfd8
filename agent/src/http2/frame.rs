//! Frame layer (RFC 9113 section 4): cuts one direction's plaintext into whole frames
//! wherever the `SSL_*` calls split or merged them, and takes a frame's payload apart
//! (padding, priority fields, promised stream ids).

use super::{Direction, Http2Error, to_u64};

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header.
pub(super) const HEADER_LEN: usize = 9;

/// Largest frame a peer may send before it raised `SETTINGS_MAX_FRAME_SIZE`; the first
/// frame seen on a connection joined mid-way must fit in it to be taken for HTTP/2.
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;

/// `END_STREAM` (DATA, HEADERS).
pub(super) const END_STREAM: u8 = 0x1;
/// `ACK` (SETTINGS, PING).
pub(super) const ACK: u8 = 0x1;
/// `END_HEADERS` (HEADERS, `PUSH_PROMISE`, CONTINUATION).
pub(super) const END_HEADERS: u8 = 0x4;
/// `PADDED` (DATA, HEADERS, `PUSH_PROMISE`).
const PADDED: u8 = 0x8;
/// `PRIORITY` (HEADERS).
const PRIORITY: u8 = 0x20;

/// Frame types (RFC 9113 section 6); other values are extensions, which are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    Goaway,
    WindowUpdate,
    Continuation,
    Extension(u8),
}

impl Kind {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Data,
            1 => Self::Headers,
            2 => Self::Priority,
            3 => Self::RstStream,
            4 => Self::Settings,
            5 => Self::PushPromise,
            6 => Self::Ping,
            7 => Self::Goaway,
            8 => Self::WindowUpdate,
            9 => Self::Continuation,
            other => Self::Extension(other),
        }
    }

    /// The payload length the type fixes, if it fixes one.
    fn fixed_len(self) -> Option<usize> {
        match self {
            Self::Priority => Some(5),
            Self::RstStream | Self::WindowUpdate => Some(4),
            Self::Ping => Some(8),
            _ => None,
        }
    }

    /// Whether frames of this type belong to a stream (stream id not 0) or to the
    /// connection (stream id 0); `None` for extensions, which may be either.
    fn on_stream(self) -> Option<bool> {
        match self {
            Self::Settings | Self::Ping | Self::Goaway => Some(false),
            Self::WindowUpdate | Self::Extension(_) => None,
            _ => Some(true),
        }
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub len: usize,
    pub kind: Kind,
    pub flags: u8,
    pub stream: u32,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of `bytes`, which must hold them.
    fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *bytes;
        Self {
            len: usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2),
            kind: Kind::from_u8(kind),
            flags,
            // The reserved bit is ignored on receipt (RFC 9113 section 4.1).
            stream: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Checks what the header alone can say is wrong, given the receiver's
    /// `SETTINGS_MAX_FRAME_SIZE`.
    fn check(&self, direction: Direction, offset: u64, max_len: usize) -> Result<(), Http2Error> {
        let malformed = |what: &'static str| Http2Error::MalformedFrame {
            direction,
            offset,
            kind: self.kind.name(),
            what,
        };
        if self.len > max_len {
            return Err(malformed(
                "it is larger than the receiver's maximum frame size",
            ));
        }
        if let Some(len) = self.kind.fixed_len()
            && self.len != len
        {
            return Err(malformed("its payload has the wrong length"));
        }
        if self.kind == Kind::Settings && !self.len.is_multiple_of(6) {
            return Err(malformed("its payload is not a whole number of settings"));
        }
        if self.kind == Kind::Goaway && self.len < 8 {
            return Err(malformed("its payload is shorter than 8 bytes"));
        }
        match self.kind.on_stream() {
            Some(true) if self.stream == 0 => Err(malformed("it names stream 0")),
            Some(false) if self.stream != 0 => Err(malformed("it names a stream")),
            _ => Ok(()),
        }
    }
}

impl Kind {
    /// The type's name in RFC 9113, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Data => "DATA",
            Self::Headers => "HEADERS",
            Self::Priority => "PRIORITY",
            Self::RstStream => "RST_STREAM",
            Self::Settings => "SETTINGS",
            Self::PushPromise => "PUSH_PROMISE",
            Self::Ping => "PING",
            Self::Goaway => "GOAWAY",
            Self::WindowUpdate => "WINDOW_UPDATE",
            Self::Continuation => "CONTINUATION",
            Self::Extension(_) => "extension",
        }
    }
}

/// Whether `bytes`, the first seen on a connection joined mid-way, start with a frame
/// header that a client or server could have sent: a known type, a length within the
/// default maximum, and a stream id where the type wants one. Text (an HTTP/1.x head or
/// body) starts with a printable byte and so claims a length above the default maximum.
pub(super) fn could_start_frame(bytes: &[u8]) -> bool {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return false;
    };
    let header = Header::parse(head);
    !matches!(header.kind, Kind::Extension(_))
        && header.check(Direction::Write, 0, DEFAULT_MAX_FRAME).is_ok()
}

/// See [`super::starts_with_server_preface`].
pub(super) fn starts_with_server_preface(bytes: &[u8]) -> bool {
    bytes.first_chunk::<HEADER_LEN>().is_some_and(|head| {
        let header = Header::parse(head);
        header.kind == Kind::Settings
            && !header.has(ACK)
            && header.check(Direction::Read, 0, DEFAULT_MAX_FRAME).is_ok()
    })
}

/// Largest frame length a frame header can state.
pub(super) const LARGEST_FRAME: usize = (1 << 24) - 1;

/// Collects one direction's bytes into whole frames.
#[derive(Debug)]
pub(super) struct FrameReader {
    /// An unfinished frame carried over to the next chunk.
    buf: Vec<u8>,
    /// Stream offset of the next frame's first byte, for error messages.
    offset: u64,
    /// The receiver's `SETTINGS_MAX_FRAME_SIZE`.
    max_len: usize,
}

impl FrameReader {
    /// A reader for frames no longer than `max_len`.
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            offset: 0,
            max_len,
        }
    }

    /// The receiver announced a new `SETTINGS_MAX_FRAME_SIZE`.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len.clamp(DEFAULT_MAX_FRAME, LARGEST_FRAME);
    }

    /// Feeds the next chunk; `frame` is called for each frame it completes, in order,
    /// with the frame's stream offset.
    pub fn push(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        mut frame: impl FnMut(Header, &[u8], u64) -> Result<(), Http2Error>,
    ) -> Result<(), Http2Error> {
        if self.buf.is_empty() {
            let used = self.frames(direction, bytes, &mut frame)?;
            self.buf
                .extend_from_slice(bytes.get(used..).unwrap_or_default());
        } else {
            self.buf.extend_from_slice(bytes);
            let buf = std::mem::take(&mut self.buf);
            let used = self.frames(direction, &buf, &mut frame)?;
            self.buf = buf;
            self.buf.drain(..used);
        }
        Ok(())
    }

    /// Hands out the whole frames at the start of `bytes`; the bytes used.
    fn frames(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        frame: &mut impl FnMut(Header, &[u8], u64) -> Result<(), Http2Error>,
    ) -> Result<usize, Http2Error> {
        let mut at = 0;
        while let Some(head) = bytes.get(at..).and_then(<[u8]>::first_chunk::<HEADER_LEN>) {
            let header = Header::parse(head);
            header.check(direction, self.offset, self.max_len)?;
            let end = at + HEADER_LEN + header.len;
            let Some(payload) = bytes.get(at + HEADER_LEN..end) else {
                break;
            };
            frame(header, payload, self.offset)?;
            self.offset += to_u64(HEADER_LEN + header.len);
            at = end;
        }
        Ok(at)
    }
}

/// A frame's payload without its padding (DATA, HEADERS, `PUSH_PROMISE` with `PADDED`),
/// its priority fields (HEADERS with `PRIORITY`) and, for `PUSH_PROMISE`, the promised
/// stream id, which is returned beside it.
pub(super) fn content(
    header: Header,
    payload: &[u8],
    direction: Direction,
    offset: u64,
) -> Result<(&[u8], Option<u32>), Http2Error> {
    let malformed = |what: &'static str| Http2Error::MalformedFrame {
        direction,
        offset,
        kind: header.kind.name(),
        what,
    };
    let mut body = payload;
    if header.has(PADDED) && matches!(header.kind, Kind::Data | Kind::Headers | Kind::PushPromise) {
        let (&pad, rest) = body
            .split_first()
            .ok_or_else(|| malformed("it is padded but has no pad length"))?;
        let keep = rest
            .len()
            .checked_sub(usize::from(pad))
            .ok_or_else(|| malformed("its padding is longer than its payload"))?;
        body = rest.get(..keep).unwrap_or_default();
    }
    if header.kind == Kind::Headers && header.has(PRIORITY) {
        body = body
            .get(5..)
            .ok_or_else(|| malformed("its priority fields are cut short"))?;
    }
    if header.kind == Kind::PushPromise {
        let (id, rest) = body
            .split_first_chunk::<4>()
            .ok_or_else(|| malformed("its promised stream id is cut short"))?;
        return Ok((rest, Some(u32::from_be_bytes(*id) & 0x7fff_ffff)));
    }
    Ok((body, None))
}

/// `SETTINGS_HEADER_TABLE_SIZE`.
pub(super) const HEADER_TABLE_SIZE: u16 = 1;
/// `SETTINGS_MAX_FRAME_SIZE`.
pub(super) const MAX_FRAME_SIZE: u16 = 5;

/// The (identifier, value) pairs of a SETTINGS payload, in order.
pub(super) fn settings(payload: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    payload
        .as_chunks::<6>()
        .0
        .iter()
        .map(|&[i0, i1, v0, v1, v2, v3]| {
            (
                u16::from_be_bytes([i0, i1]),
                u32::from_be_bytes([v0, v1, v2, v3]),
            )
        })
}

/// The 32-bit big-endian value at the start of a payload (`RST_STREAM`'s error code,
/// GOAWAY's last stream id without its reserved bit), which the caller checked is there.
pub(super) fn u32_at_start(payload: &[u8]) -> u32 {
    payload
        .first_chunk::<4>()
        .map_or(0, |b| u32::from_be_bytes(*b))
}
