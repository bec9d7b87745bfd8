//! Turns the stream of decoded kernel events into HTTP exchanges, one TLS
//! connection (process + `SSL *`) at a time: puts call chunks back together,
//! notices bytes the kernel lost, remembers each connection's SNI and peer, tells
//! HTTP/2 from HTTP/1.1 (the client preface, or a frame header on a connection joined
//! mid-way) and feeds the plaintext to that version's reassembler.
//!
//! The reassemblers take requests as `Write` and responses as `Read`, the client's
//! view. A connection whose first bytes go through a socket the process accepted on
//! an `--app-port` (the kernel's accept events) is served by the process: its reads are
//! the requests, so each direction is flipped once, where the kernel's direction
//! enters ([`Connection::side`]), and everything else is the same.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use llmsim_ebpf_common::{Direction, DropReason, SkippedConn, is_plain_connection};
use llmsim_snapshot::model::HttpVersion;

use crate::{
    events::{Data, Loss, Sequence, SequenceEnd},
    http1::{self, Http1Connection},
    http2::{self, Http2Connection},
};

/// A finished exchange and what is known about its connection.
#[derive(Debug)]
pub struct ConnectionExchange {
    /// The process.
    pub tgid: u32,
    /// The `SSL *`.
    pub ssl: u64,
    /// The process served this exchange on an app port (`--app-port`).
    pub inbound: bool,
    /// The thread that made the request (the last call that carried request bytes),
    /// or for an inbound exchange the one that read it.
    pub tid: u32,
    /// For an outbound exchange: its thread had read an inbound request by the time
    /// the exchange ended, so it is taken to work for the request it read.
    pub on_serving_thread: bool,
    /// The SNI the client asked for, if seen.
    pub sni: Option<String>,
    /// The socket's peer, if the fd was seen and its connect was traced.
    pub peer: Option<SocketAddr>,
    /// The HTTP version of the connection.
    pub http_version: HttpVersion,
    /// The exchange; `incomplete` says why it is not whole, as far as the
    /// bytes that arrived show.
    pub exchange: http1::Exchange,
}

/// Counters for the capture summary.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TrackerStats {
    /// Connections whose plaintext was neither HTTP/1.1 nor HTTP/2, or turned
    /// malformed; skipped from there on.
    pub non_http_connections: u64,
    /// Connections whose client spoke HTTP/2 (sent its preface, or, joined mid-way,
    /// frames).
    pub http2_connections: u64,
    /// Of those, connections skipped from a malformed frame, a HPACK error, an
    /// oversized header block or a frame for an unknown stream on (also counted in
    /// `non_http_connections`).
    pub http2_malformed_connections: u64,
    /// HTTP/2 exchanges that came out with header fields left out, because those
    /// fields refer to HPACK table entries from before the capture joined the
    /// connection; each is flagged incomplete.
    pub http2_withheld_exchanges: u64,
    /// HTTP/2 client streams already under way when the capture joined their
    /// connection: their frames were passed over and no exchange was written for them.
    pub http2_streams_before_join: u64,
    /// Connections where this process answered requests (a server) on a port
    /// other than the `--app-port`s; skipped.
    pub server_connections: u64,
    /// Connections the process accepted on an `--app-port`: recorded, inbound.
    pub inbound_connections: u64,
    /// Connections first seen in the middle of an exchange (the probes were
    /// attached while they were in use); parsing resumed at the next request.
    pub joined_connections: u64,
    /// Plaintext bytes seen.
    pub plaintext_bytes: u64,
    /// Calls of which no byte arrived, seen as skipped sequence numbers or
    /// reported by the kernel; the kernel's `whole_calls` of every drop reason
    /// add up to this.
    pub whole_calls_lost: u64,
    /// Bytes the kernel could not deliver, as it attributed them to the
    /// connections that ended (freed, or their process exited).
    pub lost_bytes_attributed: u64,
    /// TLS connections whose SNI names a host the capture does not record, or
    /// that the agent stopped parsing (this process serves them, or they are
    /// not HTTP): from the moment the agent knew, the kernel skipped their
    /// calls (no ring space, no copy); what arrived before is discarded as
    /// before.
    pub skipped_connections: u64,
    /// Exchanges on those connections that the kernel skipped, counted from
    /// its request turns (a write after a read: exact for HTTP/1.1 clients).
    pub skipped_exchanges: u64,
    /// Of the skipped connections, those whose kernel entry was evicted (its
    /// table was full) before they ended: their later plaintext reached the
    /// agent, to be discarded there.
    pub skipped_evicted: u64,
}

/// Why an exchange is flagged when the kernel could not deliver some of its
/// bytes and did not say why: a call cut short shows as a gap in its chunks'
/// offsets, which says which exchange and which way, and resynchronizes the
/// parser. When the kernel says why (a loss record, the bits on a later chunk,
/// skipped sequence numbers), the reason is one of [`loss_why`]'s, which
/// start with this text.
pub const LOST: &str = "the kernel could not deliver part of a TLS read or write";

/// Why an exchange is flagged when the kernel could not deliver some of its
/// bytes for `reason`.
pub const fn loss_why(reason: DropReason) -> &'static str {
    match reason {
        DropReason::RingFull => {
            "the kernel could not deliver part of a TLS read or write: the ring buffer was full"
        }
        DropReason::CopyFailed => {
            "the kernel could not deliver part of a TLS read or write: the process's buffer could not be read"
        }
        DropReason::ChunkCap => {
            "the kernel could not deliver part of a TLS read or write: one call was larger than 64 MiB"
        }
        DropReason::MissingEntry => {
            "the kernel could not deliver part of a TLS read or write: the table of calls in progress was full"
        }
    }
}

/// Which drop reason an exchange's `incomplete` text names, if any.
pub fn loss_reason_of(incomplete: &str) -> Option<DropReason> {
    DropReason::ALL
        .into_iter()
        .find(|&reason| incomplete.ends_with(loss_why(reason)))
}

/// The reason named by `bits` ([`DropReason::bit`]); a call lost whole with
/// no bit set lost its entry in the call table, the one loss the kernel
/// cannot attribute itself.
fn reason_of_bits(bits: u32) -> DropReason {
    DropReason::ALL
        .into_iter()
        .find(|reason| bits & reason.bit() != 0)
        .unwrap_or(DropReason::MissingEntry)
}

/// Why an exchange is flagged when the capture began in its middle.
const JOINED: &str = "the capture began in the middle of this exchange";

/// The reassembler of a connection's HTTP version.
enum Protocol {
    Http1(Http1Connection),
    Http2(Http2Connection),
}

impl Default for Protocol {
    fn default() -> Self {
        Self::Http1(Http1Connection::new())
    }
}

impl Protocol {
    /// The reassembler for a connection whose first bytes are `bytes`, on `side`: HTTP/2 if the
    /// client wrote the preface or the server's preface (a SETTINGS frame, which may be
    /// read before a client's first write completes) came first, HTTP/2 joined mid-way if
    /// they are another frame (the probes were attached while the connection was in use),
    /// and HTTP/1.1 otherwise.
    fn recognise(side: Direction, bytes: &[u8], stats: &mut TrackerStats) -> Self {
        let preface = match side {
            Direction::Write => http2::starts_with_preface(bytes),
            Direction::Read => http2::starts_with_server_preface(bytes),
        };
        if preface {
            stats.http2_connections += 1;
            Self::Http2(Http2Connection::new())
        } else if !http1::looks_like_http1_request(bytes) && http2::could_start_frame(bytes) {
            stats.http2_connections += 1;
            stats.joined_connections += 1;
            Self::Http2(Http2Connection::joined())
        } else {
            Self::default()
        }
    }

    fn version(&self) -> HttpVersion {
        match self {
            Self::Http1(_) => HttpVersion::Http11,
            Self::Http2(_) => HttpVersion::Http2,
        }
    }

    fn mark_lost(&mut self, direction: Direction, why: &str) -> Vec<http1::Exchange> {
        match self {
            Self::Http1(http) => http.mark_lost(direction, why),
            Self::Http2(http) => http.mark_lost(direction, why),
        }
    }
}

#[derive(Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one connection"
)]
struct Connection {
    http: Protocol,
    sni: Option<String>,
    fd: Option<i32>,
    /// The process serves this connection: it reads requests.
    inbound: bool,
    /// The thread of the last call that carried request bytes.
    tid: u32,
    /// The call whose chunks are arriving: (side, `call_len`, bytes received).
    call: Option<(Direction, u64, u64)>,
    /// Nothing more is parsed: not HTTP, or a server-side connection.
    skipped: bool,
    /// Any plaintext seen yet.
    started: bool,
    /// Any response bytes seen yet.
    read_seen: bool,
    /// The kernel was told to skip its calls ([`Tracker::skip`]).
    skipped_in_kernel: bool,
}

impl Connection {
    /// Which side of an exchange bytes moving `direction` through the process carry,
    /// as the reassemblers take them: `Write` for requests, `Read` for responses.
    fn side(&self, direction: Direction) -> Direction {
        match (self.inbound, direction) {
            (false, direction) => direction,
            (true, Direction::Write) => Direction::Read,
            (true, Direction::Read) => Direction::Write,
        }
    }
}

/// Every live connection of the traced processes.
#[derive(Default)]
pub struct Tracker {
    connections: HashMap<(u32, u64), Connection>,
    peers: HashMap<(u32, i32), SocketAddr>,
    /// The sequence number expected next, per (process, connection, direction).
    sequences: HashMap<(u32, u64, u32), u64>,
    /// Sockets (process, fd) accepted on an app port.
    inbound_sockets: HashSet<(u32, i32)>,
    /// Threads (process, thread) that have read an inbound request.
    serving_threads: HashSet<(u32, u32)>,
    stats: TrackerStats,
}

impl Tracker {
    /// The counters so far.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// A client set the SNI on `ssl`. A pointer that had traffic already is a
    /// new connection reusing freed memory: the old one is finished first.
    pub fn on_sni(
        &mut self,
        tgid: u32,
        ssl: u64,
        name: String,
        now_ns: u64,
    ) -> Vec<ConnectionExchange> {
        let mut done = Vec::new();
        if self
            .connections
            .get(&(tgid, ssl))
            .is_some_and(|c| c.started)
        {
            done = self.finish_connection(tgid, ssl, now_ns);
        }
        self.connections.entry((tgid, ssl)).or_default().sni = Some(name);
        done
    }

    /// The kernel skips the calls of `ssl` from now on (the agent told it: its host is
    /// not recorded); what arrived before goes on to the recorder, which discards it.
    pub fn skip(&mut self, tgid: u32, ssl: u64) {
        let conn = self.connections.entry((tgid, ssl)).or_default();
        if !conn.skipped_in_kernel {
            conn.skipped_in_kernel = true;
            self.stats.skipped_connections += 1;
        }
    }

    /// Whether the agent stopped parsing TLS connection `ssl` of `tgid` (this process is its
    /// server, or it is not HTTP) while the kernel still delivers its calls: such a
    /// connection costs ring space and copies for nothing until the kernel skips it too.
    /// Plain-socket connections are chosen by destination in the kernel already.
    pub fn unparsed_yet_delivered(&self, tgid: u32, ssl: u64) -> bool {
        !is_plain_connection(ssl)
            && self
                .connections
                .get(&(tgid, ssl))
                .is_some_and(|conn| conn.skipped && !conn.skipped_in_kernel)
    }

    /// Whether the kernel was told to skip `ssl` and its end is not known yet.
    pub fn skipped_in_kernel(&self, tgid: u32, ssl: u64) -> bool {
        self.connections
            .get(&(tgid, ssl))
            .is_some_and(|conn| conn.skipped_in_kernel)
    }

    /// How the kernel's skipping of `ssl` ended (its entry, removed when the
    /// connection ended or its process exited): counts the exchanges it skipped.
    /// A first skipped write that continues a request the agent saw start is not
    /// a new exchange.
    pub fn on_skipped_end(&mut self, tgid: u32, ssl: u64, skipped: SkippedConn) {
        let Some(conn) = self.connections.get_mut(&(tgid, ssl)) else {
            return;
        };
        if !conn.skipped_in_kernel {
            return;
        }
        conn.skipped_in_kernel = false;
        if skipped.present == 0 {
            self.stats.skipped_evicted += 1;
            return;
        }
        if conn.skipped {
            // Parsing had stopped (a server side, or not HTTP): its exchanges were
            // never the capture's to count.
            return;
        }
        let continued = skipped.first == Direction::Write as u32
            && matches!(conn.call, Some((Direction::Write, _, _)));
        self.stats.skipped_exchanges +=
            u64::from(skipped.requests).saturating_sub(u64::from(continued));
    }

    /// The TLS library freed `ssl`: its connection is over (and the pointer
    /// may name a new one from now on).
    pub fn on_free(&mut self, tgid: u32, ssl: u64, now_ns: u64) -> Vec<ConnectionExchange> {
        self.finish_connection(tgid, ssl, now_ns)
    }

    /// The sequence of a call's first chunk, before the chunk goes to
    /// [`Tracker::on_data`]: numbers skipped since the direction's last call
    /// are calls lost whole, which flag the exchange they belonged to with the
    /// reason the chunk carries (or the call table's, when it carries none).
    pub fn on_sequence(&mut self, data: &Data<'_>, sequence: Sequence) -> Vec<ConnectionExchange> {
        if data.offset != 0 {
            return Vec::new();
        }
        Self::connection(
            &mut self.connections,
            &self.inbound_sockets,
            &mut self.stats,
            data,
        );
        let key = (data.tgid, data.ssl, data.direction as u32);
        let expected = self.sequences.insert(key, sequence.seq + 1).unwrap_or(0);
        if sequence.seq <= expected {
            // Below: the kernel's accounting entry was evicted and restarted.
            // Equal with bits set: a call cut short whose report was lost,
            // which the chunk offsets flag.
            return Vec::new();
        }
        self.stats.whole_calls_lost += sequence.seq - expected;
        self.mark_lost(
            data.tgid,
            data.ssl,
            data.direction,
            reason_of_bits(sequence.lost),
        )
    }

    /// The kernel could not deliver some of a call: flags its exchange now.
    pub fn on_loss(&mut self, loss: &Loss) -> Vec<ConnectionExchange> {
        self.sequences
            .insert((loss.tgid, loss.ssl, loss.direction as u32), loss.seq + 1);
        if loss.delivered == 0 {
            self.stats.whole_calls_lost += 1;
        }
        let conn = self.connections.entry((loss.tgid, loss.ssl)).or_default();
        let side = conn.side(loss.direction);
        if let Some((dir, len, got)) = conn.call.as_mut()
            && *dir == side
            && loss.delivered > 0
        {
            // Accounted for here: not a gap for the offsets to flag again.
            *got = *len;
        }
        self.mark_lost(loss.tgid, loss.ssl, loss.direction, loss.reason)
    }

    /// How both directions of a connection ended, from the kernel, before
    /// the connection is finished: calls lost at the end show as numbers
    /// skipped, a call cut short at the end as bits whose report was lost.
    pub fn on_end(
        &mut self,
        tgid: u32,
        ssl: u64,
        ends: [SequenceEnd; 2],
    ) -> Vec<ConnectionExchange> {
        let mut done = Vec::new();
        for (direction, end) in [(Direction::Write, ends[0]), (Direction::Read, ends[1])] {
            self.stats.lost_bytes_attributed += end.lost_bytes;
            let expected = self
                .sequences
                .remove(&(tgid, ssl, direction as u32))
                .unwrap_or(0);
            let cut_short = self.connections.get(&(tgid, ssl)).is_some_and(|conn| {
                matches!(conn.call, Some((dir, len, got)) if dir == conn.side(direction) && got < len)
            });
            if end.next_seq > expected {
                self.stats.whole_calls_lost += end.next_seq - expected;
            } else if !(cut_short && end.lost != 0) {
                continue;
            }
            if let Some(conn) = self.connections.get_mut(&(tgid, ssl))
                && let side = conn.side(direction)
                && let Some((dir, len, got)) = conn.call.as_mut()
                && *dir == side
            {
                *got = *len;
            }
            done.extend(self.mark_lost(tgid, ssl, direction, reason_of_bits(end.lost)));
        }
        done
    }

    /// Flags what the calls moving `direction` of a connection were carrying as
    /// lost for `reason`.
    fn mark_lost(
        &mut self,
        tgid: u32,
        ssl: u64,
        direction: Direction,
        reason: DropReason,
    ) -> Vec<ConnectionExchange> {
        let conn = self.connections.entry((tgid, ssl)).or_default();
        if conn.skipped {
            return Vec::new();
        }
        let side = conn.side(direction);
        let done = conn.http.mark_lost(side, loss_why(reason));
        self.finished(tgid, ssl, done)
    }

    /// Exchanges of a live connection, with what is known about it.
    fn finished(&self, tgid: u32, ssl: u64, done: Vec<http1::Exchange>) -> Vec<ConnectionExchange> {
        let Some(conn) = self.connections.get(&(tgid, ssl)) else {
            return Vec::new();
        };
        let peer = self.peer_of(tgid, ssl);
        done.into_iter()
            .map(|exchange| self.exchange_of(tgid, ssl, conn, peer, exchange))
            .collect()
    }

    /// A finished exchange of `conn`, with what is known about it.
    fn exchange_of(
        &self,
        tgid: u32,
        ssl: u64,
        conn: &Connection,
        peer: Option<SocketAddr>,
        exchange: http1::Exchange,
    ) -> ConnectionExchange {
        ConnectionExchange {
            tgid,
            ssl,
            inbound: conn.inbound,
            tid: conn.tid,
            on_serving_thread: !conn.inbound && self.serving_threads.contains(&(tgid, conn.tid)),
            sni: conn.sni.clone(),
            peer,
            http_version: conn.http.version(),
            exchange,
        }
    }

    /// The connection `data` belongs to; one whose first bytes came through a socket
    /// accepted on an app port is served by the process.
    fn connection<'t>(
        connections: &'t mut HashMap<(u32, u64), Connection>,
        inbound_sockets: &HashSet<(u32, i32)>,
        stats: &mut TrackerStats,
        data: &Data<'_>,
    ) -> &'t mut Connection {
        let conn = connections.entry((data.tgid, data.ssl)).or_default();
        if !conn.started
            && !conn.inbound
            && data
                .fd
                .is_some_and(|fd| inbound_sockets.contains(&(data.tgid, fd)))
        {
            conn.inbound = true;
            stats.inbound_connections += 1;
        }
        conn
    }

    /// The connections of a process.
    pub fn connections_of(&self, tgid: u32) -> Vec<u64> {
        self.connections
            .keys()
            .filter(|(t, _)| *t == tgid)
            .map(|(_, ssl)| *ssl)
            .collect()
    }

    /// A traced thread connected `fd` to `peer` (a socket that reuses the number of
    /// an accepted one is not inbound).
    pub fn on_connect(&mut self, tgid: u32, fd: i32, peer: SocketAddr) {
        self.peers.insert((tgid, fd), peer);
        self.inbound_sockets.remove(&(tgid, fd));
    }

    /// A traced thread accepted `fd` on an app port: the connections whose first
    /// bytes go through it are served by the process.
    pub fn on_accept(&mut self, tgid: u32, fd: i32) {
        self.peers.remove(&(tgid, fd));
        self.inbound_sockets.insert((tgid, fd));
    }

    /// A chunk of plaintext.
    pub fn on_data(&mut self, data: &Data<'_>) -> Vec<ConnectionExchange> {
        self.stats.plaintext_bytes += data.bytes.len() as u64;
        let conn = Self::connection(
            &mut self.connections,
            &self.inbound_sockets,
            &mut self.stats,
            data,
        );
        if data.fd.is_some() {
            conn.fd = data.fd;
        }
        if conn.skipped {
            return Vec::new();
        }
        let side = conn.side(data.direction);
        if side == Direction::Write {
            conn.tid = data.tid;
            if conn.inbound {
                self.serving_threads.insert((data.tgid, data.tid));
            }
        }
        let first = !conn.started;
        conn.started = true;
        if first
            && side == Direction::Read
            && (http1::looks_like_http1_request(data.bytes)
                || http2::starts_with_preface(data.bytes))
        {
            // This process reads requests: it is the server of this connection.
            conn.skipped = true;
            self.stats.server_connections += 1;
            return Vec::new();
        }
        if first && data.offset == 0 {
            conn.http = Protocol::recognise(side, data.bytes, &mut self.stats);
        }
        let mut done = Vec::new();
        if let Protocol::Http1(http) = &mut conn.http
            && side == Direction::Read
            && !conn.read_seen
        {
            conn.read_seen = true;
            // A client's first read starts a response head. Anything else means
            // the probes were attached while this connection was in use (a
            // process whose TLS library was found after it started): resume at
            // the next request instead of calling the connection malformed.
            if data.offset != 0 || !could_start_response(data.bytes) {
                if first {
                    // Its request went unseen too.
                    done.extend(http.mark_lost(Direction::Write, JOINED));
                }
                done.extend(http.mark_lost(Direction::Read, JOINED));
                if data.offset != 0 {
                    // The rest of this call follows; its start is not a gap to flag again.
                    conn.call = Some((side, data.call_len, data.offset));
                }
                self.stats.joined_connections += 1;
            }
        }
        // Chunks of one call arrive in order; a gap means the kernel dropped some.
        let continues = matches!(conn.call, Some((dir, len, got)) if dir == side && got == data.offset && got < len);
        if data.offset == 0 {
            if let Some((dir, len, got)) = conn.call
                && got < len
            {
                done.extend(conn.http.mark_lost(dir, LOST));
            }
            conn.call = Some((side, data.call_len, 0));
        } else if !continues {
            done.extend(conn.http.mark_lost(side, LOST));
            conn.call = Some((side, data.call_len, data.offset));
        }
        if let Some((_, _, got)) = conn.call.as_mut() {
            *got = data.offset + data.bytes.len() as u64;
        }
        let pushed = match &mut conn.http {
            Protocol::Http1(http) => http.push(side, data.end_ns, data.bytes).map_err(|error| {
                if matches!(error, http1::Http1Error::Http2Preface) {
                    self.stats.http2_connections += 1;
                }
                error.to_string()
            }),
            Protocol::Http2(http) => http.push(side, data.end_ns, data.bytes).map_err(|error| {
                self.stats.http2_malformed_connections += 1;
                error.to_string()
            }),
        };
        match pushed {
            Ok(exchanges) => done.extend(exchanges),
            Err(error) => {
                tracing::warn!(
                    pid = data.tgid,
                    "skipping a TLS connection that is not HTTP/1.1 or HTTP/2: {error}"
                );
                self.stats.non_http_connections += 1;
                conn.skipped = true;
            }
        }
        self.finished(data.tgid, data.ssl, done)
    }

    fn peer_of(&self, tgid: u32, ssl: u64) -> Option<SocketAddr> {
        let fd = self.connections.get(&(tgid, ssl))?.fd?;
        self.socket_peer(tgid, fd)
    }

    /// Where socket `fd` of process `tgid` connected, when its connect was seen.
    pub fn socket_peer(&self, tgid: u32, fd: i32) -> Option<SocketAddr> {
        self.peers.get(&(tgid, fd)).copied()
    }

    fn finish_connection(&mut self, tgid: u32, ssl: u64, now_ns: u64) -> Vec<ConnectionExchange> {
        let peer = self.peer_of(tgid, ssl);
        for direction in [Direction::Write, Direction::Read] {
            // The kernel starts a reused identity afresh.
            self.sequences.remove(&(tgid, ssl, direction as u32));
        }
        let Some(mut conn) = self.connections.remove(&(tgid, ssl)) else {
            return Vec::new();
        };
        let mut done = Vec::new();
        if let Some((dir, len, got)) = conn.call
            && got < len
        {
            done.extend(conn.http.mark_lost(dir, LOST));
        }
        // A poisoned connection still returns what completed before the error.
        match &mut conn.http {
            Protocol::Http1(http) => done.extend(http.finish(now_ns)),
            Protocol::Http2(http) => {
                done.extend(http.finish());
                self.stats.http2_withheld_exchanges += http.withheld_exchanges();
                self.stats.http2_streams_before_join += http.streams_before_join();
            }
        }
        done.into_iter()
            .map(|exchange| self.exchange_of(tgid, ssl, &conn, peer, exchange))
            .collect()
    }

    /// Finishes every connection of a process that exited, in [`in_record_order`].
    pub fn finish_process(&mut self, tgid: u32, now_ns: u64) -> Vec<ConnectionExchange> {
        let keys: Vec<_> = self
            .connections
            .keys()
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect();
        self.peers.retain(|(t, _), _| *t != tgid);
        self.sequences.retain(|(t, _, _), _| *t != tgid);
        self.serving_threads.retain(|(t, _)| *t != tgid);
        self.inbound_sockets.retain(|(t, _)| *t != tgid);
        let mut done: Vec<_> = keys
            .into_iter()
            .flat_map(|(t, ssl)| self.finish_connection(t, ssl, now_ns))
            .collect();
        in_record_order(&mut done);
        done
    }

    /// Finishes everything (end of capture), in [`in_record_order`].
    pub fn finish_all(&mut self, now_ns: u64) -> Vec<ConnectionExchange> {
        let keys: Vec<_> = self.connections.keys().copied().collect();
        let mut done: Vec<_> = keys
            .into_iter()
            .flat_map(|(t, ssl)| self.finish_connection(t, ssl, now_ns))
            .collect();
        in_record_order(&mut done);
        done
    }

    /// Processes with live connections.
    pub fn tgids(&self) -> Vec<u32> {
        let mut tgids: Vec<u32> = self.connections.keys().map(|(t, _)| *t).collect();
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }
}

/// Sorts exchanges finished together the way they are recorded: outbound ones first, so
/// the inbound ones that link them come after them, each by request start.
fn in_record_order(done: &mut [ConnectionExchange]) {
    done.sort_by_key(|c| (c.inbound, c.exchange.request.start_ns));
}

/// Whether `bytes`, the first a client read on a connection, can be the start
/// of a status line (`HTTP/1.1 200 OK`), even cut short.
fn could_start_response(bytes: &[u8]) -> bool {
    const START: &[u8] = b"HTTP/1.";
    let n = bytes.len().min(START.len());
    n > 0 && bytes[..n] == START[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSL: u64 = 0x5555_0000;
    const REQUEST: &[u8] =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 2\r\n\r\n{}";
    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

    /// Feeds one whole call, in chunks of `chunk` bytes.
    fn call(
        tracker: &mut Tracker,
        direction: Direction,
        bytes: &[u8],
        chunk: usize,
        ts: u64,
    ) -> Vec<ConnectionExchange> {
        let mut done = Vec::new();
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            done.extend(tracker.on_data(&Data {
                tgid: 7,
                tid: 7,
                ssl: SSL,
                direction,
                start_ns: ts,
                end_ns: ts,
                call_len: bytes.len() as u64,
                offset: (i * chunk) as u64,
                fd: None,
                bytes: piece,
            }));
        }
        done
    }

    fn exchange(tracker: &mut Tracker, ts: u64) -> Vec<ConnectionExchange> {
        let mut done = call(tracker, Direction::Write, REQUEST, 1 << 14, ts);
        done.extend(call(tracker, Direction::Read, RESPONSE, 1 << 14, ts + 1));
        done
    }

    #[test]
    fn a_skipped_connection_counts_the_exchanges_the_kernel_skipped_once() {
        let skipped = |first: Direction, requests: u32| SkippedConn {
            present: 1,
            first: first as u32,
            last: Direction::Read as u32,
            requests,
        };
        // Skipped from its first call: every turn the kernel counted is an exchange.
        let mut tracker = Tracker::default();
        tracker.skip(7, SSL);
        assert!(tracker.skipped_in_kernel(7, SSL));
        tracker.on_skipped_end(7, SSL, skipped(Direction::Write, 3));
        assert!(!tracker.skipped_in_kernel(7, SSL));
        assert_eq!(tracker.stats().skipped_exchanges, 3);
        // A request seen starting before the kernel skipped its rest: that
        // exchange is the agent's to count, not a turn.
        let mut tracker = Tracker::default();
        call(&mut tracker, Direction::Write, &REQUEST[..10], 1 << 14, 1);
        tracker.skip(7, SSL);
        tracker.on_skipped_end(7, SSL, skipped(Direction::Write, 3));
        assert_eq!(tracker.stats().skipped_exchanges, 2);
        // An entry the map evicted counts no exchange, and says so.
        let mut tracker = Tracker::default();
        tracker.skip(7, SSL);
        tracker.on_skipped_end(7, SSL, SkippedConn::default());
        let stats = tracker.stats();
        assert_eq!((stats.skipped_exchanges, stats.skipped_evicted), (0, 1));
        assert_eq!(stats.skipped_connections, 1);
    }

    #[test]
    fn a_connection_this_process_serves_is_left_to_the_kernel_to_skip() {
        let mut tracker = Tracker::default();
        // A client's connection is parsed: nothing for the kernel to skip.
        call(&mut tracker, Direction::Write, REQUEST, 1 << 14, 1);
        assert!(!tracker.unparsed_yet_delivered(7, SSL));
        // This process reads a request first: it is the server, and parsing stops.
        let mut tracker = Tracker::default();
        call(&mut tracker, Direction::Read, REQUEST, 1 << 14, 1);
        assert!(tracker.unparsed_yet_delivered(7, SSL));
        tracker.skip(7, SSL);
        assert!(!tracker.unparsed_yet_delivered(7, SSL));
        // The turns the kernel skipped on it are not exchanges anyone asked for.
        tracker.on_skipped_end(
            7,
            SSL,
            SkippedConn {
                present: 1,
                first: Direction::Read as u32,
                last: Direction::Write as u32,
                requests: 5,
            },
        );
        assert_eq!(tracker.stats().skipped_exchanges, 0);
        assert_eq!(tracker.stats().server_connections, 1);
        // A plain-socket connection is chosen in the kernel by destination already.
        let mut tracker = Tracker::default();
        tracker.on_data(&Data {
            tgid: 7,
            tid: 7,
            ssl: llmsim_ebpf_common::PLAIN_CONNECTION | 5,
            direction: Direction::Read,
            start_ns: 1,
            end_ns: 1,
            call_len: REQUEST.len() as u64,
            offset: 0,
            fd: Some(5),
            bytes: REQUEST,
        });
        assert!(!tracker.unparsed_yet_delivered(7, llmsim_ebpf_common::PLAIN_CONNECTION | 5));
    }

    #[test]
    fn a_request_and_its_response_make_an_exchange() {
        let mut tracker = Tracker::default();
        let done = exchange(&mut tracker, 10);
        assert_eq!(done.len(), 1);
        assert!(done[0].exchange.incomplete.is_none(), "{:?}", done[0]);
        assert_eq!(done[0].exchange.request.body, b"{}");
    }

    #[test]
    fn a_call_of_many_chunks_is_put_back_together() {
        let body = vec![b'x'; 4 * 1024 * 1024 + 3];
        let mut request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let mut tracker = Tracker::default();
        assert!(call(&mut tracker, Direction::Write, &request, 16 * 1024, 1).is_empty());
        let done = call(&mut tracker, Direction::Read, RESPONSE, 16 * 1024, 2);
        assert_eq!(done.len(), 1);
        assert!(done[0].exchange.incomplete.is_none());
        assert_eq!(done[0].exchange.request.body, body);
    }

    #[test]
    fn a_missing_chunk_flags_the_exchange() {
        let mut tracker = Tracker::default();
        // A call of two chunks whose second (the body's last byte) never arrives.
        let first = tracker.on_data(&Data {
            tgid: 7,
            tid: 7,
            ssl: SSL,
            direction: Direction::Write,
            start_ns: 1,
            end_ns: 1,
            call_len: REQUEST.len() as u64,
            offset: 0,
            fd: None,
            bytes: &REQUEST[..REQUEST.len() - 1],
        });
        assert!(first.is_empty());
        let mut done = call(&mut tracker, Direction::Read, RESPONSE, 1 << 14, 2);
        done.extend(tracker.finish_all(3));
        assert!(!done.is_empty());
        assert!(
            done.iter().all(|d| d.exchange.incomplete.is_some()),
            "{done:?}"
        );
        // The one reason for lost bytes, with the way they flowed when known.
        assert_eq!(
            done[0].exchange.incomplete.as_deref(),
            Some("request bytes lost: the kernel could not deliver part of a TLS read or write")
        );
        assert_eq!(
            http1::lost_reason(None, LOST),
            "bytes lost: the kernel could not deliver part of a TLS read or write"
        );
    }

    #[test]
    fn joining_inside_a_response_resumes_at_the_next_request() {
        let mut tracker = Tracker::default();
        // The probes came up in the middle of a streamed response.
        let tail = b"127\r\ndata: {\"id\":1}\r\n\r\n\r\n0\r\n\r\n";
        assert!(call(&mut tracker, Direction::Read, tail, 1 << 14, 1).is_empty());
        let done = exchange(&mut tracker, 10);
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].exchange.incomplete.is_none(), "{done:?}");
        let stats = tracker.stats();
        assert_eq!(stats.joined_connections, 1);
        assert_eq!(stats.non_http_connections, 0);
    }

    #[test]
    fn a_response_head_missed_flags_only_that_exchange() {
        let mut tracker = Tracker::default();
        // The request was seen, the read probes came up after its response head.
        assert!(call(&mut tracker, Direction::Write, REQUEST, 1 << 14, 1).is_empty());
        let mut done = call(&mut tracker, Direction::Read, b"{}", 1 << 14, 2);
        done.extend(exchange(&mut tracker, 10));
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(
            done[0].exchange.incomplete.as_deref(),
            Some("response bytes lost: the capture began in the middle of this exchange")
        );
        assert!(done[1].exchange.incomplete.is_none(), "{done:?}");
        assert_eq!(tracker.stats().non_http_connections, 0);
    }

    #[test]
    fn non_http_and_http2_clients_are_counted_and_skipped() {
        let mut tracker = Tracker::default();
        let garbage = b"\x16\x03\x01 not http at all \x00\xff\r\n\r\n";
        assert!(call(&mut tracker, Direction::Write, garbage, 1 << 14, 1).is_empty());
        assert!(call(&mut tracker, Direction::Read, RESPONSE, 1 << 14, 2).is_empty());
        assert!(tracker.finish_all(3).is_empty());
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        assert!(call(&mut tracker, Direction::Write, preface, 1 << 14, 4).is_empty());
        // A server that does not speak HTTP/2 answers the preface in HTTP/1.x.
        assert!(call(&mut tracker, Direction::Read, RESPONSE, 1 << 14, 5).is_empty());
        let stats = tracker.stats();
        assert_eq!(stats.non_http_connections, 2);
        assert_eq!(stats.http2_connections, 1);
        assert_eq!(stats.joined_connections, 0);
    }

    /// An HTTP/2 frame.
    fn h2_frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let len = u8::try_from(payload.len()).unwrap();
        let mut out = vec![0, 0, len, kind, flags, 0, 0, 0, stream];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn http2_is_recognised_by_its_preface_or_by_its_frames() {
        // POST https://api.openai.com/ from the static table and one literal.
        let mut block = vec![0x83, 0x87, 0x84, 0x41, 14];
        block.extend_from_slice(b"api.openai.com");
        let request = [
            http2::PREFACE,
            &h2_frame(4, 0, 0, &[]),
            &h2_frame(1, 0x4, 1, &block),
            &h2_frame(0, 0x1, 1, b"{}"),
        ]
        .concat();
        // SETTINGS, then :status 200 (static) ending the stream.
        let response = [h2_frame(4, 0, 0, &[]), h2_frame(1, 0x5, 1, &[0x88])].concat();
        let mut tracker = Tracker::default();
        assert!(call(&mut tracker, Direction::Write, &request, 7, 1).is_empty());
        let done = call(&mut tracker, Direction::Read, &response, 1 << 14, 2);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].http_version, HttpVersion::Http2);
        assert!(done[0].exchange.incomplete.is_none(), "{done:?}");
        assert_eq!(done[0].exchange.request.method, "POST");
        assert_eq!(done[0].exchange.request.body, b"{}");
        assert_eq!(done[0].exchange.response.as_ref().unwrap().status, 200);

        // The server's preface read before the client's first write returned.
        let mut tracker = Tracker::default();
        let settings = h2_frame(4, 0, 0, &[]);
        assert!(call(&mut tracker, Direction::Read, &settings, 1 << 14, 1).is_empty());
        assert!(call(&mut tracker, Direction::Write, &request, 1 << 14, 2).is_empty());
        let done = call(
            &mut tracker,
            Direction::Read,
            &response[settings.len()..],
            1 << 14,
            3,
        );
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].exchange.incomplete.is_none(), "{done:?}");
        assert_eq!(tracker.stats().joined_connections, 0);

        // The same connection joined after its preface: recognised by its frames.
        let mut tracker = Tracker::default();
        let joined = request.get(http2::PREFACE.len()..).unwrap();
        assert!(call(&mut tracker, Direction::Write, joined, 1 << 14, 1).is_empty());
        let done = call(&mut tracker, Direction::Read, &response, 1 << 14, 2);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].http_version, HttpVersion::Http2);
        assert!(done[0].exchange.incomplete.is_none(), "{done:?}");
        let stats = tracker.stats();
        assert_eq!(
            (
                stats.http2_connections,
                stats.joined_connections,
                stats.non_http_connections
            ),
            (1, 1, 0)
        );
    }

    #[test]
    fn a_server_connection_is_skipped() {
        let mut tracker = Tracker::default();
        assert!(call(&mut tracker, Direction::Read, REQUEST, 1 << 14, 1).is_empty());
        assert!(call(&mut tracker, Direction::Write, RESPONSE, 1 << 14, 2).is_empty());
        assert!(tracker.finish_all(3).is_empty());
        assert_eq!(tracker.stats().server_connections, 1);
    }

    #[test]
    fn an_inbound_connection_reads_requests_and_writes_responses() {
        let mut tracker = Tracker::default();
        tracker.on_accept(7, 4);
        let mut done = Vec::new();
        for (direction, bytes, tid) in [
            (Direction::Read, REQUEST, 8),
            (Direction::Write, RESPONSE, 9),
        ] {
            done.extend(tracker.on_data(&Data {
                tgid: 7,
                tid,
                ssl: SSL,
                direction,
                start_ns: 1,
                end_ns: 1,
                call_len: bytes.len() as u64,
                offset: 0,
                fd: Some(4),
                bytes,
            }));
        }
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].inbound);
        assert_eq!(done[0].tid, 8, "the thread that read the request");
        assert!(done[0].exchange.incomplete.is_none(), "{done:?}");
        assert_eq!(done[0].exchange.request.body, b"{}");
        assert_eq!(done[0].exchange.response.as_ref().unwrap().status, 200);
        let stats = tracker.stats();
        assert_eq!(
            (stats.inbound_connections, stats.server_connections),
            (1, 0)
        );
        // Thread 8 read a request: its calls are taken to serve it; thread 7's are not.
        assert!(tracker.serving_threads.contains(&(7, 8)));
        assert!(tracker.on_free(7, SSL, 2).is_empty());
        let outbound = exchange(&mut tracker, 3);
        assert_eq!(outbound.len(), 1, "{outbound:?}");
        assert!(!outbound[0].inbound);
        assert!(!outbound[0].on_serving_thread, "thread 7 read no request");
    }

    #[test]
    fn a_short_first_read_can_still_start_a_response() {
        assert!(could_start_response(b"HT"));
        assert!(could_start_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(!could_start_response(b""));
        assert!(!could_start_response(b"127\r\ndata"));
    }

    /// One whole call with its sequence, as capture hands it over.
    fn sequenced(
        tracker: &mut Tracker,
        direction: Direction,
        bytes: &[u8],
        seq: u64,
        lost: u32,
    ) -> Vec<ConnectionExchange> {
        let data = Data {
            tgid: 7,
            tid: 7,
            ssl: SSL,
            direction,
            start_ns: seq,
            end_ns: seq,
            call_len: bytes.len() as u64,
            offset: 0,
            fd: None,
            bytes,
        };
        let mut done = tracker.on_sequence(&data, Sequence { seq, lost });
        done.extend(tracker.on_data(&data));
        done
    }

    #[test]
    fn a_skipped_sequence_number_flags_the_exchange_with_its_reason() {
        // The response's first read was lost whole: its number never arrives.
        let mut tracker = Tracker::default();
        assert!(sequenced(&mut tracker, Direction::Write, REQUEST, 0, 0).is_empty());
        let head_end = RESPONSE.len() - 2;
        assert!(sequenced(&mut tracker, Direction::Read, &RESPONSE[..head_end], 0, 0).is_empty());
        let done = sequenced(&mut tracker, Direction::Read, b"}", 2, 0);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(
            done[0].exchange.incomplete.as_deref(),
            Some(
                "response bytes lost: the kernel could not deliver part of a TLS read or write: the table of calls in progress was full"
            )
        );
        assert_eq!(tracker.stats().whole_calls_lost, 1);

        // With the reason's bit on the next chunk, that reason.
        let mut tracker = Tracker::default();
        let head = &REQUEST[..REQUEST.len() - 2];
        assert!(sequenced(&mut tracker, Direction::Write, head, 0, 0).is_empty());
        let ring = DropReason::RingFull.bit();
        let mut done = sequenced(&mut tracker, Direction::Write, b"{}", 2, ring);
        done.extend(call(&mut tracker, Direction::Read, RESPONSE, 1 << 14, 9));
        done.extend(tracker.finish_all(10));
        assert!(!done.is_empty());
        assert_eq!(
            done[0].exchange.incomplete.as_deref(),
            Some(
                "request bytes lost: the kernel could not deliver part of a TLS read or write: the ring buffer was full"
            )
        );
        assert_eq!(tracker.stats().whole_calls_lost, 1);
        assert_eq!(
            loss_reason_of(done[0].exchange.incomplete.as_deref().unwrap()),
            Some(DropReason::RingFull)
        );
    }

    #[test]
    fn a_loss_record_flags_at_once_and_calls_lost_at_the_end_flag_on_free() {
        // A request body whose copy failed: flagged before the response comes.
        let mut tracker = Tracker::default();
        let head = &REQUEST[..REQUEST.len() - 2];
        assert!(sequenced(&mut tracker, Direction::Write, head, 0, 0).is_empty());
        tracker.on_loss(&Loss {
            tgid: 7,
            ssl: SSL,
            direction: Direction::Write,
            seq: 1,
            delivered: 0,
            lost_bytes: 2,
            reason: DropReason::CopyFailed,
        });
        let mut done = sequenced(&mut tracker, Direction::Read, RESPONSE, 0, 0);
        done.extend(tracker.finish_all(5));
        assert_eq!(
            done[0].exchange.incomplete.as_deref(),
            Some(
                "request bytes lost: the kernel could not deliver part of a TLS read or write: the process's buffer could not be read"
            )
        );
        assert_eq!(tracker.stats().whole_calls_lost, 1);

        // A close-delimited response whose last read was lost whole: the free says so.
        let mut tracker = Tracker::default();
        assert!(sequenced(&mut tracker, Direction::Write, REQUEST, 0, 0).is_empty());
        let open_ended = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome";
        assert!(sequenced(&mut tracker, Direction::Read, open_ended, 0, 0).is_empty());
        let mut done = tracker.on_end(
            7,
            SSL,
            [
                SequenceEnd {
                    next_seq: 1,
                    lost: 0,
                    lost_bytes: 0,
                },
                SequenceEnd {
                    next_seq: 2,
                    lost: 0,
                    lost_bytes: 0,
                },
            ],
        );
        done.extend(tracker.on_free(7, SSL, 6));
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(
            done[0].exchange.incomplete.as_deref(),
            Some(
                "response bytes lost: the kernel could not deliver part of a TLS read or write: the table of calls in progress was full"
            )
        );
        // A later connection on the same pointer starts its numbers afresh.
        assert!(sequenced(&mut tracker, Direction::Write, REQUEST, 0, 0).is_empty());
        let done = sequenced(&mut tracker, Direction::Read, RESPONSE, 0, 0);
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].exchange.incomplete.is_none(), "{done:?}");
    }
}
