//! Turns the stream of decoded kernel events into HTTP exchanges, one TLS
//! connection (process + `SSL *`) at a time: puts call chunks back together,
//! notices bytes the kernel lost, remembers each connection's SNI and peer, tells
//! HTTP/2 from HTTP/1.1 (the client preface, or a frame header on a connection joined
//! mid-way) and feeds the plaintext to that version's reassembler.

use std::{collections::HashMap, net::SocketAddr};

use llmsim_ebpf_common::Direction;
use llmsim_snapshot::model::HttpVersion;

use crate::{
    events::Data,
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
    /// Connections where this process answered requests (a server); skipped.
    pub server_connections: u64,
    /// Connections first seen in the middle of an exchange (the probes were
    /// attached while they were in use); parsing resumed at the next request.
    pub joined_connections: u64,
    /// Plaintext bytes seen.
    pub plaintext_bytes: u64,
}

/// Why an exchange is flagged when the kernel could not deliver some of its
/// bytes. The kernel stops emitting a call's chunks at the first it cannot
/// deliver and adds the rest to the connection's count in `LOST_BYTES`. A call
/// cut short shows here as a gap, which says which exchange and which way, and
/// resynchronizes the parser: that flag is authoritative. A call of which no
/// chunk arrived leaves no gap and shows only in the count, which capture reads
/// as it records each exchange and uses to flag an exchange nothing else
/// flagged. Both give this reason, through [`http1::lost_reason`].
pub const LOST: &str = "the kernel could not deliver part of a TLS read or write";
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
    /// The reassembler for a connection whose first bytes are `data`'s: HTTP/2 if the
    /// client wrote the preface or the server's preface (a SETTINGS frame, which may be
    /// read before a client's first write completes) came first, HTTP/2 joined mid-way if
    /// they are another frame (the probes were attached while the connection was in use),
    /// and HTTP/1.1 otherwise.
    fn recognise(data: &Data<'_>, stats: &mut TrackerStats) -> Self {
        let preface = match data.direction {
            Direction::Write => http2::starts_with_preface(data.bytes),
            Direction::Read => http2::starts_with_server_preface(data.bytes),
        };
        if preface {
            stats.http2_connections += 1;
            Self::Http2(Http2Connection::new())
        } else if !http1::looks_like_http1_request(data.bytes)
            && http2::could_start_frame(data.bytes)
        {
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
struct Connection {
    http: Protocol,
    sni: Option<String>,
    fd: Option<i32>,
    /// The call whose chunks are arriving: (direction, `call_len`, bytes received).
    call: Option<(Direction, u64, u64)>,
    /// Nothing more is parsed: not HTTP, or a server-side connection.
    skipped: bool,
    /// Any plaintext seen yet.
    started: bool,
    /// Any plaintext read yet.
    read_seen: bool,
}

/// Every live connection of the traced processes.
#[derive(Default)]
pub struct Tracker {
    connections: HashMap<(u32, u64), Connection>,
    peers: HashMap<(u32, i32), SocketAddr>,
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

    /// The TLS library freed `ssl`: its connection is over (and the pointer
    /// may name a new one from now on).
    pub fn on_free(&mut self, tgid: u32, ssl: u64, now_ns: u64) -> Vec<ConnectionExchange> {
        self.finish_connection(tgid, ssl, now_ns)
    }

    /// A traced thread connected `fd` to `peer`.
    pub fn on_connect(&mut self, tgid: u32, fd: i32, peer: SocketAddr) {
        self.peers.insert((tgid, fd), peer);
    }

    /// A chunk of plaintext.
    pub fn on_data(&mut self, data: &Data<'_>) -> Vec<ConnectionExchange> {
        self.stats.plaintext_bytes += data.bytes.len() as u64;
        let conn = self.connections.entry((data.tgid, data.ssl)).or_default();
        if data.fd.is_some() {
            conn.fd = data.fd;
        }
        if conn.skipped {
            return Vec::new();
        }
        let first = !conn.started;
        conn.started = true;
        if first
            && data.direction == Direction::Read
            && (http1::looks_like_http1_request(data.bytes)
                || http2::starts_with_preface(data.bytes))
        {
            // This process reads requests: it is the server of this connection.
            conn.skipped = true;
            self.stats.server_connections += 1;
            return Vec::new();
        }
        if first && data.offset == 0 {
            conn.http = Protocol::recognise(data, &mut self.stats);
        }
        let mut done = Vec::new();
        if let Protocol::Http1(http) = &mut conn.http
            && data.direction == Direction::Read
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
                    conn.call = Some((data.direction, data.call_len, data.offset));
                }
                self.stats.joined_connections += 1;
            }
        }
        // Chunks of one call arrive in order; a gap means the kernel dropped some.
        let continues = matches!(conn.call, Some((dir, len, got)) if dir == data.direction && got == data.offset && got < len);
        if data.offset == 0 {
            if let Some((dir, len, got)) = conn.call
                && got < len
            {
                done.extend(conn.http.mark_lost(dir, LOST));
            }
            conn.call = Some((data.direction, data.call_len, 0));
        } else if !continues {
            done.extend(conn.http.mark_lost(data.direction, LOST));
            conn.call = Some((data.direction, data.call_len, data.offset));
        }
        if let Some((_, _, got)) = conn.call.as_mut() {
            *got = data.offset + data.bytes.len() as u64;
        }
        let pushed =
            match &mut conn.http {
                Protocol::Http1(http) => http
                    .push(data.direction, data.end_ns, data.bytes)
                    .map_err(|error| {
                        if matches!(error, http1::Http1Error::Http2Preface) {
                            self.stats.http2_connections += 1;
                        }
                        error.to_string()
                    }),
                Protocol::Http2(http) => http
                    .push(data.direction, data.end_ns, data.bytes)
                    .map_err(|error| {
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
        let http_version = conn.http.version();
        let (sni, peer) = (conn.sni.clone(), self.peer_of(data.tgid, data.ssl));
        done.into_iter()
            .map(|exchange| ConnectionExchange {
                tgid: data.tgid,
                ssl: data.ssl,
                sni: sni.clone(),
                peer,
                http_version,
                exchange,
            })
            .collect()
    }

    fn peer_of(&self, tgid: u32, ssl: u64) -> Option<SocketAddr> {
        let fd = self.connections.get(&(tgid, ssl))?.fd?;
        self.peers.get(&(tgid, fd)).copied()
    }

    fn finish_connection(&mut self, tgid: u32, ssl: u64, now_ns: u64) -> Vec<ConnectionExchange> {
        let peer = self.peer_of(tgid, ssl);
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
        let http_version = conn.http.version();
        done.into_iter()
            .map(|exchange| ConnectionExchange {
                tgid,
                ssl,
                sni: conn.sni.clone(),
                peer,
                http_version,
                exchange,
            })
            .collect()
    }

    /// Finishes every connection of a process that exited.
    pub fn finish_process(&mut self, tgid: u32, now_ns: u64) -> Vec<ConnectionExchange> {
        let keys: Vec<_> = self
            .connections
            .keys()
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect();
        self.peers.retain(|(t, _), _| *t != tgid);
        keys.into_iter()
            .flat_map(|(t, ssl)| self.finish_connection(t, ssl, now_ns))
            .collect()
    }

    /// Finishes everything (end of capture).
    pub fn finish_all(&mut self, now_ns: u64) -> Vec<ConnectionExchange> {
        let keys: Vec<_> = self.connections.keys().copied().collect();
        let mut done: Vec<_> = keys
            .into_iter()
            .flat_map(|(t, ssl)| self.finish_connection(t, ssl, now_ns))
            .collect();
        done.sort_by_key(|c| c.exchange.request.start_ns);
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
    fn a_short_first_read_can_still_start_a_response() {
        assert!(could_start_response(b"HT"));
        assert!(could_start_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(!could_start_response(b""));
        assert!(!could_start_response(b"127\r\ndata"));
    }
}
