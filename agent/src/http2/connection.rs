//! The connection state machine: the client preface, one frame reader and one header
//! decoder per direction, the header block a HEADERS frame opened until its last
//! CONTINUATION, and the streams in flight, each turned into an [`Exchange`] when both
//! its request and its response ended, in the order the streams started.

use std::collections::{BTreeMap, BTreeSet};

use super::frame::{self, END_HEADERS, END_STREAM, FrameReader, Header, Kind, PREFACE};
use super::hpack::{Block, HeaderDecoder};
use super::{Direction, Headers, Http2Error, MAX_HEADER_BLOCK, withheld_reason};
use crate::http1::{ENDED_IN_RESPONSE_BODY, Exchange, Request, Response, lost_reason};

/// The incomplete reason of streams the server will not process (GOAWAY).
const REFUSED: &str = "the server closed the connection (GOAWAY) before processing this stream";

/// A stream on its way to becoming an [`Exchange`].
#[derive(Debug)]
struct Stream {
    request: Request,
    request_done: bool,
    response: Option<Response>,
    /// Interim statuses seen before the final response head.
    interim: Vec<u16>,
    response_done: bool,
    incomplete: Option<String>,
    /// Fields of its header blocks were left out (joined connection).
    withheld: bool,
}

impl Stream {
    /// Records why the exchange is incomplete; the first reason wins.
    fn flag(&mut self, reason: impl FnOnce() -> String) {
        if self.incomplete.is_none() {
            self.incomplete = Some(reason());
        }
    }

    /// Counts fields a header block of `direction` lost to unknown table state.
    fn withhold(&mut self, direction: Direction, withheld: usize) {
        if withheld > 0 {
            self.withheld = true;
            self.flag(|| withheld_reason(direction, withheld));
        }
    }

    fn done(&self) -> bool {
        self.request_done && self.response_done
    }
}

/// A header block being collected: a HEADERS or `PUSH_PROMISE` frame's fragment, then
/// its CONTINUATIONs.
#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    /// The HEADERS frame ended its stream.
    end_stream: bool,
    /// A `PUSH_PROMISE`'s block: decoded to keep the table in step, not recorded.
    promise: bool,
    bytes: Vec<u8>,
}

/// One direction: its frames and its header blocks.
#[derive(Debug)]
struct Half {
    frames: FrameReader,
    hpack: HeaderDecoder,
    block: Option<OpenBlock>,
}

impl Half {
    fn new(joined: bool) -> Self {
        // Joined mid-way, the peer may have raised the limit already.
        let max_frame = if joined {
            frame::LARGEST_FRAME
        } else {
            frame::DEFAULT_MAX_FRAME
        };
        Self {
            frames: FrameReader::new(max_frame),
            hpack: HeaderDecoder::new(joined),
            block: None,
        }
    }
}

/// Reassembles the HTTP/2 exchanges of one connection.
#[derive(Debug)]
pub struct Http2Connection {
    write: Half,
    read: Half,
    /// Preface bytes still expected at the start of the write stream.
    preface_left: usize,
    streams: BTreeMap<u32, Stream>,
    /// Highest stream id the client opened.
    last_opened: u32,
    /// The first stream id the client opened after the capture began (0: none yet).
    first_opened: u32,
    /// Client streams under way when the capture joined the connection: their frames
    /// are passed over, no exchange is written for them.
    before_join: BTreeSet<u32>,
    /// The capture began after the connection did.
    joined: bool,
    /// An error, or a gap that lost the framing, stopped decoding.
    stopped: bool,
    /// Exchanges emitted with fields left out.
    withheld_exchanges: u64,
}

impl Http2Connection {
    /// A connection seen from its start: the client's first bytes are the preface.
    #[must_use]
    pub fn new() -> Self {
        Self::with(false)
    }

    /// A connection the capture joined in its middle, at a frame boundary: header table
    /// state from before is unknown, and streams from before are passed over.
    #[must_use]
    pub fn joined() -> Self {
        Self::with(true)
    }

    fn with(joined: bool) -> Self {
        Self {
            write: Half::new(joined),
            read: Half::new(joined),
            preface_left: if joined { 0 } else { PREFACE.len() },
            streams: BTreeMap::new(),
            last_opened: 0,
            first_opened: 0,
            before_join: BTreeSet::new(),
            joined,
            stopped: false,
            withheld_exchanges: 0,
        }
    }

    /// Exchanges emitted so far that had header fields left out because they depend on
    /// table state from before the capture began.
    #[must_use]
    pub fn withheld_exchanges(&self) -> u64 {
        self.withheld_exchanges
    }

    /// Client streams that had started before the capture joined the connection, and of
    /// which frames went by after it: passed over, with no exchange written.
    #[must_use]
    pub fn streams_before_join(&self) -> u64 {
        u64::try_from(self.before_join.len()).unwrap_or(u64::MAX)
    }

    /// Feeds the next chunk of one direction; returns the exchanges it completed, in the
    /// order their streams started. A stream's exchange is emitted once its request and
    /// response both ended (or it was reset) and every stream started before it was
    /// emitted.
    ///
    /// After an error the connection stops: later pushes return `Ok(vec![])`, and
    /// [`finish`](Self::finish) returns the streams in flight flagged with the error.
    ///
    /// # Errors
    ///
    /// An [`Http2Error`] when a frame is malformed or out of place, a header block cannot
    /// be decoded or is too large, or a frame names a stream the client never opened.
    pub fn push(
        &mut self,
        direction: Direction,
        ts_ns: u64,
        bytes: &[u8],
    ) -> Result<Vec<Exchange>, Http2Error> {
        if self.stopped {
            return Ok(Vec::new());
        }
        match self.push_frames(direction, ts_ns, bytes) {
            Ok(()) => Ok(self.ready()),
            Err(error) => {
                self.stopped = true;
                for stream in self.streams.values_mut() {
                    stream.flag(|| format!("decoding stopped: {error}"));
                }
                Err(error)
            }
        }
    }

    fn push_frames(
        &mut self,
        direction: Direction,
        ts_ns: u64,
        mut bytes: &[u8],
    ) -> Result<(), Http2Error> {
        if direction == Direction::Write && self.preface_left > 0 {
            let at = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(bytes.len());
            if bytes.get(..n) != PREFACE.get(at..at + n) {
                return Err(Http2Error::BadPreface);
            }
            self.preface_left -= n;
            bytes = bytes.get(n..).unwrap_or_default();
        }
        let mut frames = std::mem::replace(&mut self.half(direction).frames, FrameReader::new(0));
        let result = frames.push(direction, bytes, |header, payload, offset| {
            self.frame(direction, ts_ns, header, payload, offset)
        });
        self.half(direction).frames = frames;
        result
    }

    fn half(&mut self, direction: Direction) -> &mut Half {
        match direction {
            Direction::Write => &mut self.write,
            Direction::Read => &mut self.read,
        }
    }

    /// Handles one whole frame.
    fn frame(
        &mut self,
        direction: Direction,
        ts_ns: u64,
        header: Header,
        payload: &[u8],
        offset: u64,
    ) -> Result<(), Http2Error> {
        let unexpected = |what: &'static str| Http2Error::UnexpectedFrame {
            direction,
            offset,
            kind: header.kind.name(),
            stream: header.stream,
            what,
        };
        let half = self.half(direction);
        if let Some(block) = &half.block
            && (header.kind != Kind::Continuation || header.stream != block.stream)
        {
            return Err(unexpected("a header block of another stream is still open"));
        }
        match header.kind {
            Kind::Continuation => {
                let mut block = half
                    .block
                    .take()
                    .ok_or_else(|| unexpected("no header block is open"))?;
                append(&mut block, payload, direction)?;
                if header.has(END_HEADERS) {
                    self.header_block(direction, ts_ns, &block, offset)
                } else {
                    self.half(direction).block = Some(block);
                    Ok(())
                }
            }
            Kind::Headers | Kind::PushPromise => {
                let promise = header.kind == Kind::PushPromise;
                if promise && direction == Direction::Write {
                    return Err(unexpected("a client cannot push"));
                }
                let (fragment, _) = frame::content(header, payload, direction, offset)?;
                let mut block = OpenBlock {
                    stream: header.stream,
                    end_stream: !promise && header.has(END_STREAM),
                    promise,
                    bytes: Vec::new(),
                };
                append(&mut block, fragment, direction)?;
                if header.has(END_HEADERS) {
                    self.header_block(direction, ts_ns, &block, offset)
                } else {
                    self.half(direction).block = Some(block);
                    Ok(())
                }
            }
            Kind::Data => {
                let (data, _) = frame::content(header, payload, direction, offset)?;
                self.data(direction, ts_ns, header, data, offset)
            }
            Kind::RstStream => {
                self.passes_over(header.stream);
                self.reset(direction, header.stream, frame::u32_at_start(payload));
                Ok(())
            }
            Kind::Settings => {
                if !header.has(frame::ACK) {
                    // Not an ACK: the sender's limits, which bind the other direction's
                    // encoder.
                    let other = self.half(other(direction));
                    for (id, value) in frame::settings(payload) {
                        match id {
                            frame::HEADER_TABLE_SIZE => other.hpack.set_max_table_size(value),
                            frame::MAX_FRAME_SIZE => other
                                .frames
                                .set_max_len(usize::try_from(value).unwrap_or(usize::MAX)),
                            _ => {}
                        }
                    }
                }
                Ok(())
            }
            Kind::Goaway => {
                if direction == Direction::Read {
                    let last = frame::u32_at_start(payload) & 0x7fff_ffff;
                    for stream in self.streams.range_mut(last + 1..).map(|(_, s)| s) {
                        stream.flag(|| REFUSED.to_owned());
                        stream.request_done = true;
                        stream.response_done = true;
                    }
                }
                Ok(())
            }
            Kind::Priority | Kind::Ping | Kind::WindowUpdate | Kind::Extension(_) => Ok(()),
        }
    }

    /// Whether a frame naming `stream`, which is not in flight, is to be passed over
    /// rather than be an error: a pushed stream, one that already ended, or one from
    /// before the capture began (which is counted).
    fn passes_over(&mut self, stream: u32) -> bool {
        let client = !stream.is_multiple_of(2);
        if self.joined && client && (self.first_opened == 0 || stream < self.first_opened) {
            self.before_join.insert(stream);
        }
        !client || stream <= self.last_opened || self.joined
    }

    /// A complete header block.
    fn header_block(
        &mut self,
        direction: Direction,
        ts_ns: u64,
        block: &OpenBlock,
        offset: u64,
    ) -> Result<(), Http2Error> {
        let stream = block.stream;
        let Block { fields, withheld } =
            self.half(direction)
                .hpack
                .decode(&block.bytes)
                .map_err(|source| Http2Error::Hpack {
                    direction,
                    stream,
                    source,
                })?;
        if block.promise {
            return Ok(());
        }
        let in_flight = self.streams.contains_key(&stream);
        let opens = direction == Direction::Write
            && !in_flight
            && !stream.is_multiple_of(2)
            && stream > self.last_opened;
        let passes_over = !in_flight && !opens && self.passes_over(stream);
        let unknown = || Http2Error::UnknownStream {
            direction,
            offset,
            kind: Kind::Headers.name(),
            stream,
        };
        match direction {
            Direction::Write => match self.streams.get_mut(&stream) {
                Some(s) => {
                    // The request's trailers.
                    s.request.trailers = fields;
                    s.withhold(direction, withheld);
                    s.request.end_ns = ts_ns;
                    s.request_done |= block.end_stream;
                }
                None if opens => {
                    self.last_opened = stream;
                    if self.first_opened == 0 {
                        self.first_opened = stream;
                    }
                    let mut s = new_stream(fields, ts_ns, block.end_stream);
                    s.withhold(direction, withheld);
                    self.streams.insert(stream, s);
                }
                None if passes_over => {}
                None => return Err(unknown()),
            },
            Direction::Read => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return if passes_over { Ok(()) } else { Err(unknown()) };
                };
                if s.response_done {
                    return Ok(());
                }
                if let Some(response) = &mut s.response {
                    response.trailers = fields;
                    response.end_ns = ts_ns;
                } else {
                    let status = fields
                        .iter()
                        .find(|(name, _)| name == ":status")
                        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
                    let status = match status {
                        Some(status) => status,
                        // Left out with the fields that depend on unknown table state.
                        None if withheld > 0 => 0,
                        None => {
                            return Err(Http2Error::MalformedFrame {
                                direction,
                                offset,
                                kind: Kind::Headers.name(),
                                what: "the response's header block has no valid :status",
                            });
                        }
                    };
                    if (100..200).contains(&status) {
                        s.interim.push(status);
                    } else {
                        s.response = Some(Response {
                            version: 0,
                            status,
                            reason: String::new(),
                            headers: fields.into_iter().filter(|(n, _)| n != ":status").collect(),
                            body_segments: Vec::new(),
                            trailers: Headers::new(),
                            first_byte_ns: ts_ns,
                            end_ns: ts_ns,
                            interim: std::mem::take(&mut s.interim),
                        });
                    }
                }
                s.withhold(direction, withheld);
                s.response_done |= block.end_stream;
            }
        }
        Ok(())
    }

    /// A DATA frame's content.
    fn data(
        &mut self,
        direction: Direction,
        ts_ns: u64,
        header: Header,
        data: &[u8],
        offset: u64,
    ) -> Result<(), Http2Error> {
        let passes_over = self.passes_over(header.stream);
        let Some(s) = self.streams.get_mut(&header.stream) else {
            return if passes_over {
                Ok(())
            } else {
                Err(Http2Error::UnknownStream {
                    direction,
                    offset,
                    kind: Kind::Data.name(),
                    stream: header.stream,
                })
            };
        };
        let end = header.has(END_STREAM);
        match direction {
            Direction::Write => {
                if !s.request_done {
                    s.request.body.extend_from_slice(data);
                    s.request.end_ns = ts_ns;
                    s.request_done = end;
                }
            }
            Direction::Read => {
                if s.response_done {
                    return Ok(());
                }
                let response = s.response.as_mut().ok_or(Http2Error::UnexpectedFrame {
                    direction,
                    offset,
                    kind: Kind::Data.name(),
                    stream: header.stream,
                    what: "the response's HEADERS did not come first",
                })?;
                if !data.is_empty() {
                    // One segment per read, as HTTP/1.1 bodies have.
                    match response.body_segments.last_mut() {
                        Some((ts, bytes)) if *ts == ts_ns => bytes.extend_from_slice(data),
                        _ => response.body_segments.push((ts_ns, data.to_vec())),
                    }
                }
                response.end_ns = ts_ns;
                s.response_done = end;
            }
        }
        Ok(())
    }

    /// `RST_STREAM`: the stream is over, cut short unless its response had ended.
    fn reset(&mut self, direction: Direction, stream: u32, code: u32) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if !s.response_done {
            let who = match direction {
                Direction::Write => "client",
                Direction::Read => "server",
            };
            s.flag(|| format!("the {who} reset the stream (error code {code})"));
        }
        s.request_done = true;
        s.response_done = true;
    }

    /// The exchanges at the front whose streams ended.
    fn ready(&mut self) -> Vec<Exchange> {
        let mut out = Vec::new();
        while let Some(entry) = self.streams.first_entry() {
            if !entry.get().done() {
                break;
            }
            let stream = entry.remove();
            out.push(self.emit(stream));
        }
        out
    }

    fn emit(&mut self, stream: Stream) -> Exchange {
        if stream.withheld {
            self.withheld_exchanges += 1;
        }
        Exchange {
            request: stream.request,
            response: stream.response,
            incomplete: stream.incomplete,
        }
    }

    /// Marks a gap: bytes of this direction were lost in the kernel. Frames cannot be
    /// found again after it, nor can the header table be trusted, so every stream in
    /// flight comes out flagged and the connection is decoded no further.
    pub fn mark_lost(&mut self, direction: Direction, reason: &str) -> Vec<Exchange> {
        self.stopped = true;
        for stream in self.streams.values_mut() {
            stream.flag(|| lost_reason(Some(direction), reason));
        }
        self.drain()
    }

    /// The connection ended (close, process exit, capture stop): every stream still in
    /// flight comes out flagged incomplete, in the order they started. Unlike an
    /// HTTP/1.1 body, no HTTP/2 message is delimited by the close, so the time it ended
    /// is not needed.
    pub fn finish(&mut self) -> Vec<Exchange> {
        for stream in self.streams.values_mut() {
            if !stream.request_done {
                stream.flag(|| "connection ended inside the request".to_owned());
            } else if stream.response.is_none() {
                stream.flag(|| "connection ended before the response".to_owned());
            } else if !stream.response_done {
                stream.flag(|| ENDED_IN_RESPONSE_BODY.to_owned());
            }
        }
        self.stopped = true;
        self.drain()
    }

    fn drain(&mut self) -> Vec<Exchange> {
        let streams = std::mem::take(&mut self.streams);
        streams.into_values().map(|s| self.emit(s)).collect()
    }
}

impl Default for Http2Connection {
    fn default() -> Self {
        Self::new()
    }
}

/// The other direction.
fn other(direction: Direction) -> Direction {
    match direction {
        Direction::Write => Direction::Read,
        Direction::Read => Direction::Write,
    }
}

/// A stream the client opened with a request header block.
fn new_stream(fields: Headers, ts_ns: u64, end_stream: bool) -> Stream {
    let mut method = String::new();
    let mut target = String::new();
    let mut headers = Headers::new();
    for (name, value) in fields {
        match name.as_str() {
            ":method" => method = String::from_utf8_lossy(&value).into_owned(),
            ":path" => target = String::from_utf8_lossy(&value).into_owned(),
            _ => headers.push((name, value)),
        }
    }
    Stream {
        request: Request {
            method,
            target,
            version: 0,
            headers,
            body: Vec::new(),
            trailers: Headers::new(),
            start_ns: ts_ns,
            end_ns: ts_ns,
        },
        request_done: end_stream,
        response: None,
        interim: Vec::new(),
        response_done: false,
        incomplete: None,
        withheld: false,
    }
}

/// Adds a fragment to a header block, within [`MAX_HEADER_BLOCK`].
fn append(block: &mut OpenBlock, fragment: &[u8], direction: Direction) -> Result<(), Http2Error> {
    if block.bytes.len() + fragment.len() > MAX_HEADER_BLOCK {
        return Err(Http2Error::HeaderBlockTooLarge {
            direction,
            stream: block.stream,
            limit: MAX_HEADER_BLOCK,
        });
    }
    block.bytes.extend_from_slice(fragment);
    Ok(())
}
