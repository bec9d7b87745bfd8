//! The connection state machine: pairs requests with responses in order, drives the head
//! and body parsers of each direction over every pushed chunk, and decides what a gap or
//! the end of the connection does to the exchanges in flight.

use std::collections::VecDeque;

use super::body::{BodyDecoder, Chunked};
use super::head::{self, Framing, HeadScan};
use super::{
    Direction, Exchange, Http1Error, Request, Response, looks_like_http1_request, lost_reason,
    to_u64,
};

/// A request on its way to becoming an [`Exchange`].
#[derive(Debug)]
struct Pending {
    request: Request,
    request_done: bool,
    response: Option<Response>,
    /// Interim statuses seen before the final response head.
    interim: Vec<u16>,
    response_done: bool,
    incomplete: Option<String>,
}

impl Pending {
    /// Records why the exchange is incomplete; the first reason wins, as later ones are
    /// usually its consequences.
    fn flag(&mut self, reason: impl FnOnce() -> String) {
        if self.incomplete.is_none() {
            self.incomplete = Some(reason());
        }
    }

    fn into_exchange(self) -> Exchange {
        Exchange {
            request: self.request,
            response: self.response,
            incomplete: self.incomplete,
        }
    }
}

/// Request-side parser state.
#[derive(Debug)]
enum WriteState {
    Head(HeadScan),
    /// Body of the last request in `pending`.
    Body(BodyDecoder),
    /// After lost bytes: skip writes until one starts with a request line.
    Resync,
}

/// Response-side parser state.
#[derive(Debug)]
enum ReadState {
    Head(HeadScan),
    /// Body of the response being read; `orphan` if it answers a request whose bytes were
    /// lost, in which case it is parsed only to find its end.
    Body {
        decoder: BodyDecoder,
        orphan: bool,
    },
    /// After lost bytes: skip reads until one starts with a status line.
    Resync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// A 101 or a successful CONNECT switched the connection away from HTTP/1.x.
    Upgraded,
    /// An error occurred; everything after is ignored.
    Poisoned,
    Finished,
}

/// Reassembles the HTTP/1.x exchanges of one connection.
///
/// Memory: only an unfinished head (at most [`MAX_HEAD_BYTES`](super::MAX_HEAD_BYTES))
/// is buffered; body bytes go straight from the pushed slice into the exchange being
/// built, so every body byte is copied once and never re-parsed.
#[derive(Debug)]
pub struct Http1Connection {
    write: WriteState,
    /// An unfinished request head carried over to the next write.
    write_buf: Vec<u8>,
    /// Write-stream offset of `write_buf`'s first byte, for error messages.
    write_offset: u64,
    read: ReadState,
    read_buf: Vec<u8>,
    read_offset: u64,
    /// Exchanges in request order, until they are emitted.
    pending: VecDeque<Pending>,
    /// Index in `pending` of the exchange whose response is being read. Responses
    /// complete in request order, so all entries before it have theirs.
    responding: usize,
    /// Set (with the reason) when request bytes were lost: a response arriving with no
    /// request pending then answers a lost request and is dropped, not an error.
    lost_requests: Option<String>,
    phase: Phase,
    /// Exchanges completed earlier in the push that failed; `finish` hands them out.
    salvaged: Vec<Exchange>,
}

impl Default for Http1Connection {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1Connection {
    #[must_use]
    pub fn new() -> Self {
        Self {
            write: WriteState::Head(HeadScan::default()),
            write_buf: Vec::new(),
            write_offset: 0,
            read: ReadState::Head(HeadScan::default()),
            read_buf: Vec::new(),
            read_offset: 0,
            pending: VecDeque::new(),
            responding: 0,
            lost_requests: None,
            phase: Phase::Open,
            salvaged: Vec::new(),
        }
    }

    /// Whether an error poisoned the connection.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.phase == Phase::Poisoned
    }

    /// Whether a `101 Switching Protocols` or a successful `CONNECT` turned the
    /// connection into something other than HTTP/1.x; later bytes are ignored.
    #[must_use]
    pub fn is_upgraded(&self) -> bool {
        self.phase == Phase::Upgraded
    }

    /// Feeds the next chunk of one direction; returns the exchanges it completed, in
    /// request order. An exchange is emitted once both its request and its response are
    /// complete and every earlier exchange has been emitted.
    ///
    /// After an error the connection is poisoned: later pushes return `Ok(vec![])` and
    /// [`finish`](Self::finish) returns only exchanges that completed earlier in the
    /// failing push, so the caller can count the connection and move on.
    ///
    /// # Errors
    ///
    /// An [`Http1Error`] when the bytes are not HTTP/1.x (HTTP/2 included), are
    /// malformed, or are a response that no request awaits.
    pub fn push(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        bytes: &[u8],
    ) -> Result<Vec<Exchange>, Http1Error> {
        if self.phase != Phase::Open {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        match self.feed(dir, ts_ns, bytes, &mut out) {
            Ok(()) => {
                self.drain_ready(&mut out);
                Ok(out)
            }
            Err(e) => {
                self.phase = Phase::Poisoned;
                self.salvaged = out;
                self.pending.clear();
                self.write_buf = Vec::new();
                self.read_buf = Vec::new();
                Err(e)
            }
        }
    }

    /// Marks a gap: bytes of this direction were lost in the kernel. The exchange in
    /// progress that way is flagged incomplete, and that direction skips chunks until one
    /// starts a new message (the kernel drops whole reads and writes, and clients write a
    /// request head at the start of a write).
    ///
    /// A lost write with no request in progress most likely held a whole request; its
    /// response, arriving with no request pending, is then parsed and dropped rather than
    /// treated as an error.
    ///
    /// Returns the exchanges this completed (a flagged exchange may unblock later ones).
    #[must_use = "exchanges completed by the gap are returned only here"]
    pub fn mark_lost(&mut self, dir: Direction, reason: &str) -> Vec<Exchange> {
        let mut out = Vec::new();
        if self.phase != Phase::Open {
            return out;
        }
        match dir {
            Direction::Write => {
                if matches!(self.write, WriteState::Body(_))
                    && let Some(entry) = self.pending.back_mut()
                {
                    entry.flag(|| lost_reason(Some(dir), reason));
                    entry.request_done = true;
                }
                self.lost_requests = Some(reason.to_owned());
                self.write = WriteState::Resync;
                self.write_buf.clear();
            }
            Direction::Read => {
                let orphan = matches!(self.read, ReadState::Body { orphan: true, .. });
                if !orphan && let Some(entry) = self.pending.get_mut(self.responding) {
                    // Responses only answer pending requests, so the lost bytes were (at
                    // least the start of) this one's.
                    entry.flag(|| lost_reason(Some(dir), reason));
                    entry.response_done = true;
                    self.responding += 1;
                }
                self.read = ReadState::Resync;
                self.read_buf.clear();
            }
        }
        self.drain_ready(&mut out);
        out
    }

    /// The connection ended (close, process exit, capture stop) at `ts_ns`. A response
    /// delimited by the close completes; everything else still pending comes out flagged
    /// incomplete, in request order. The connection accepts nothing afterwards.
    pub fn finish(&mut self, ts_ns: u64) -> Vec<Exchange> {
        let phase = std::mem::replace(&mut self.phase, Phase::Finished);
        match phase {
            Phase::Poisoned => return std::mem::take(&mut self.salvaged),
            Phase::Finished => return Vec::new(),
            Phase::Open | Phase::Upgraded => {}
        }
        let mut out = Vec::new();
        if phase == Phase::Open {
            self.finish_read(ts_ns, &mut out);
            if matches!(self.write, WriteState::Body(_))
                && let Some(entry) = self.pending.back_mut()
                && !entry.request_done
            {
                entry.flag(|| "connection ended inside the request body".to_owned());
            }
            if !self.write_buf.is_empty() {
                tracing::debug!(
                    bytes = self.write_buf.len(),
                    "connection ended inside a request head; dropping it"
                );
            }
        }
        for mut entry in self.pending.drain(..) {
            if !entry.response_done {
                entry.flag(|| "connection ended before the response".to_owned());
            }
            out.push(entry.into_exchange());
        }
        self.responding = 0;
        self.write_buf = Vec::new();
        self.read_buf = Vec::new();
        out
    }

    /// The read side's part of `finish`: completes a close-delimited body, flags a
    /// response cut short.
    fn finish_read(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        let reason = match &self.read {
            ReadState::Body {
                decoder: BodyDecoder::UntilClose,
                orphan: false,
            } => {
                self.complete_response(ts_ns, out);
                return;
            }
            ReadState::Body { orphan: false, .. } => super::ENDED_IN_RESPONSE_BODY,
            ReadState::Head(_) if !self.read_buf.is_empty() => {
                "connection ended inside the response head"
            }
            ReadState::Head(_) | ReadState::Body { orphan: true, .. } | ReadState::Resync => {
                return;
            }
        };
        if let Some(entry) = self.pending.get_mut(self.responding) {
            entry.flag(|| reason.to_owned());
        }
    }

    /// Runs one chunk through the parser of its direction. Bytes go straight from `bytes`
    /// unless a head is already buffered; only an unfinished head is kept afterwards.
    fn feed(
        &mut self,
        dir: Direction,
        ts: u64,
        bytes: &[u8],
        out: &mut Vec<Exchange>,
    ) -> Result<(), Http1Error> {
        let mut buf = std::mem::take(match dir {
            Direction::Write => &mut self.write_buf,
            Direction::Read => &mut self.read_buf,
        });
        let buffered = !buf.is_empty();
        if buffered {
            buf.extend_from_slice(bytes);
        }
        let data: &[u8] = if buffered { &buf } else { bytes };
        let consumed = match dir {
            Direction::Write => self.parse_writes(ts, data, out)?,
            Direction::Read => self.parse_reads(ts, data, out)?,
        };
        if buffered {
            buf.drain(..consumed.min(buf.len()));
        } else {
            buf.clear();
            buf.extend_from_slice(bytes.get(consumed..).unwrap_or_default());
        }
        // Do not keep a megabyte of capacity around for every idle connection.
        if buf.is_empty() && buf.capacity() > 64 * 1024 {
            buf = Vec::new();
        }
        let (slot, offset) = match dir {
            Direction::Write => (&mut self.write_buf, &mut self.write_offset),
            Direction::Read => (&mut self.read_buf, &mut self.read_offset),
        };
        *slot = buf;
        *offset += to_u64(consumed);
        Ok(())
    }

    /// Parses requests from `data` (which starts at `write_offset`); returns the bytes
    /// consumed. Whatever is left is the start of an unfinished head.
    fn parse_writes(
        &mut self,
        ts: u64,
        data: &[u8],
        out: &mut Vec<Exchange>,
    ) -> Result<usize, Http1Error> {
        let base = self.write_offset;
        let mut pos = 0;
        loop {
            match &mut self.write {
                WriteState::Resync => {
                    if pos == 0 && looks_like_http1_request(data) {
                        self.write = WriteState::Head(HeadScan::default());
                        continue;
                    }
                    return Ok(data.len());
                }
                WriteState::Head(scan) => {
                    let skip = head::skip_blank_lines(tail(data, pos));
                    if skip > 0 {
                        pos += skip;
                        *scan = HeadScan::default();
                    }
                    let rest = tail(data, pos);
                    // A lone CR may be the start of one more blank line.
                    if rest.is_empty() || rest == b"\r" {
                        return Ok(pos);
                    }
                    let offset = base + to_u64(pos);
                    scan.start_ns.get_or_insert(ts);
                    let Some(len) = scan.scan(Direction::Write, rest, offset)? else {
                        return Ok(pos);
                    };
                    let start_ns = scan.start_ns.unwrap_or(ts);
                    let parsed = head::parse_request(rest.get(..len).unwrap_or_default(), offset)?;
                    let framing = head::request_framing(&parsed.headers, offset)?;
                    pos += len;
                    // The client moved on to a new request: a response with no request
                    // pending is an error again.
                    self.lost_requests = None;
                    self.pending.push_back(Pending {
                        request: Request {
                            method: parsed.method,
                            target: parsed.target,
                            version: parsed.version,
                            headers: parsed.headers,
                            body: Vec::new(),
                            trailers: Vec::new(),
                            start_ns,
                            end_ns: ts,
                        },
                        request_done: framing == Framing::None,
                        response: None,
                        interim: Vec::new(),
                        response_done: false,
                        incomplete: None,
                    });
                    // `request_framing` never answers `UntilClose`.
                    self.write = match body_decoder(framing) {
                        None => WriteState::Head(HeadScan::default()),
                        Some(decoder) => WriteState::Body(decoder),
                    };
                }
                WriteState::Body(decoder) => {
                    let Some(entry) = self.pending.back_mut() else {
                        // Unreachable: a body state is entered only after pushing its request.
                        self.write = WriteState::Head(HeadScan::default());
                        continue;
                    };
                    let progress = decoder
                        .decode(tail(data, pos), &mut entry.request.body)
                        .map_err(|f| Http1Error::InvalidChunkedBody {
                            direction: Direction::Write,
                            offset: base + to_u64(pos + f.at),
                            source: f.error,
                        })?;
                    pos += progress.consumed;
                    entry.request.end_ns = ts;
                    if !progress.done {
                        return Ok(pos);
                    }
                    entry.request.trailers = decoder.take_trailers();
                    entry.request_done = true;
                    self.write = WriteState::Head(HeadScan::default());
                    self.drain_ready(out);
                }
            }
        }
    }

    /// Parses responses from `data` (which starts at `read_offset`); returns the bytes
    /// consumed. Whatever is left is the start of an unfinished head.
    fn parse_reads(
        &mut self,
        ts: u64,
        data: &[u8],
        out: &mut Vec<Exchange>,
    ) -> Result<usize, Http1Error> {
        let base = self.read_offset;
        let mut pos = 0;
        loop {
            match &mut self.read {
                ReadState::Resync => {
                    if pos == 0 && data.starts_with(b"HTTP/1.") {
                        self.read = ReadState::Head(HeadScan::default());
                        continue;
                    }
                    return Ok(data.len());
                }
                ReadState::Head(scan) => {
                    let skip = head::skip_blank_lines(tail(data, pos));
                    if skip > 0 {
                        pos += skip;
                        *scan = HeadScan::default();
                    }
                    let rest = tail(data, pos);
                    // A lone CR may be the start of one more blank line.
                    if rest.is_empty() || rest == b"\r" {
                        return Ok(pos);
                    }
                    let offset = base + to_u64(pos);
                    let orphan = self.responding >= self.pending.len();
                    if orphan && self.lost_requests.is_none() {
                        return Err(Http1Error::UnexpectedResponse { offset });
                    }
                    scan.start_ns.get_or_insert(ts);
                    let Some(len) = scan.scan(Direction::Read, rest, offset)? else {
                        return Ok(pos);
                    };
                    let first_byte_ns = scan.start_ns.unwrap_or(ts);
                    let parsed = head::parse_response(rest.get(..len).unwrap_or_default(), offset)?;
                    pos += len;
                    self.read = ReadState::Head(HeadScan::default());
                    if self.on_response_head(parsed, orphan, first_byte_ns, ts, offset, out)? {
                        // The connection stopped speaking HTTP/1.x; ignore the rest.
                        return Ok(data.len());
                    }
                }
                ReadState::Body { decoder, orphan } => {
                    let orphan = *orphan;
                    let mut segment = Vec::new();
                    let progress = decoder.decode(tail(data, pos), &mut segment).map_err(|f| {
                        Http1Error::InvalidChunkedBody {
                            direction: Direction::Read,
                            offset: base + to_u64(pos + f.at),
                            source: f.error,
                        }
                    })?;
                    pos += progress.consumed;
                    let trailers = if progress.done {
                        decoder.take_trailers()
                    } else {
                        Vec::new()
                    };
                    if !orphan
                        && let Some(response) = self
                            .pending
                            .get_mut(self.responding)
                            .and_then(|e| e.response.as_mut())
                    {
                        if !segment.is_empty() {
                            response.body_segments.push((ts, segment));
                        }
                        response.end_ns = ts;
                        response.trailers = trailers;
                    }
                    if !progress.done {
                        return Ok(pos);
                    }
                    if orphan {
                        self.read = ReadState::Head(HeadScan::default());
                    } else {
                        self.complete_response(ts, out);
                    }
                }
            }
        }
    }

    /// Acts on a parsed response head: records an interim status, or attaches the final
    /// response to its request and sets up reading its body. Returns whether the
    /// connection was upgraded away from HTTP/1.x.
    fn on_response_head(
        &mut self,
        parsed: head::ResponseHead,
        orphan: bool,
        first_byte_ns: u64,
        ts: u64,
        offset: u64,
        out: &mut Vec<Exchange>,
    ) -> Result<bool, Http1Error> {
        // 101 is the one 1xx that is final: the protocol switches after it.
        let interim = (100..200).contains(&parsed.status) && parsed.status != 101;
        if orphan {
            if !interim {
                self.start_orphan_body(&parsed, offset)?;
            }
            return Ok(false);
        }
        let Some(entry) = self.pending.get_mut(self.responding) else {
            return Ok(false);
        };
        if interim {
            entry.interim.push(parsed.status);
            return Ok(false);
        }
        let method = &entry.request.method;
        let upgraded = parsed.status == 101
            || (method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&parsed.status));
        let framing = head::response_framing(method, parsed.status, &parsed.headers, offset)?;
        entry.response = Some(Response {
            version: parsed.version,
            status: parsed.status,
            reason: parsed.reason,
            headers: parsed.headers,
            body_segments: Vec::new(),
            trailers: Vec::new(),
            first_byte_ns,
            end_ns: ts,
            interim: std::mem::take(&mut entry.interim),
        });
        if upgraded {
            self.complete_response(ts, out);
            self.phase = Phase::Upgraded;
            return Ok(true);
        }
        match body_decoder(framing) {
            None => self.complete_response(ts, out),
            Some(decoder) => {
                self.read = ReadState::Body {
                    decoder,
                    orphan: false,
                };
            }
        }
        Ok(false)
    }

    /// Sets up skipping the body of a response to a lost request.
    fn start_orphan_body(
        &mut self,
        parsed: &head::ResponseHead,
        offset: u64,
    ) -> Result<(), Http1Error> {
        tracing::debug!(
            status = parsed.status,
            lost = self.lost_requests.as_deref().unwrap_or_default(),
            "dropping a response to a request lost with write-side data"
        );
        // The lost request's method is unknown; GET is by far the likeliest shape (a HEAD
        // would desynchronise us, which the next head check would catch).
        let framing = head::response_framing("GET", parsed.status, &parsed.headers, offset)?;
        if let Some(decoder) = body_decoder(framing) {
            self.read = ReadState::Body {
                decoder,
                orphan: true,
            };
        }
        Ok(())
    }

    /// The response being read is complete: move on to the next request's.
    fn complete_response(&mut self, ts: u64, out: &mut Vec<Exchange>) {
        if let Some(entry) = self.pending.get_mut(self.responding) {
            if let Some(response) = entry.response.as_mut() {
                response.end_ns = ts;
            }
            entry.response_done = true;
            self.responding += 1;
        }
        self.read = ReadState::Head(HeadScan::default());
        self.drain_ready(out);
    }

    /// Emits the finished exchanges at the front of the queue.
    fn drain_ready(&mut self, out: &mut Vec<Exchange>) {
        while self
            .pending
            .front()
            .is_some_and(|e| e.request_done && e.response_done)
        {
            if let Some(entry) = self.pending.pop_front() {
                self.responding = self.responding.saturating_sub(1);
                out.push(entry.into_exchange());
            }
        }
    }
}

fn body_decoder(framing: Framing) -> Option<BodyDecoder> {
    match framing {
        Framing::None => None,
        Framing::Length(n) => Some(BodyDecoder::Length { remaining: n }),
        Framing::Chunked => Some(BodyDecoder::Chunked(Chunked::new())),
        Framing::UntilClose => Some(BodyDecoder::UntilClose),
    }
}

/// `data[pos..]`, or empty if `pos` is past the end (it never is).
fn tail(data: &[u8], pos: usize) -> &[u8] {
    data.get(pos..).unwrap_or_default()
}
