//! Turns the stream of decoded kernel events into HTTP exchanges, one TLS
//! connection (process + `SSL *`) at a time: puts call chunks back together,
//! notices bytes the kernel lost, remembers each connection's SNI and peer, and
//! feeds the plaintext to the HTTP/1.1 reassembler.

use std::{collections::HashMap, net::SocketAddr};

use agent_common::Direction;

use crate::{
    events::Data,
    http1::{self, Http1Connection},
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
    /// The exchange; `incomplete` is set when bytes were lost.
    pub exchange: http1::Exchange,
}

/// Counters for the capture summary.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TrackerStats {
    /// Connections whose plaintext was not HTTP/1.1 (or turned malformed); skipped.
    pub non_http_connections: u64,
    /// Of those, connections that spoke HTTP/2 (not reassembled yet).
    pub http2_connections: u64,
    /// Connections where this process answered requests (a server); skipped.
    pub server_connections: u64,
    /// Plaintext bytes seen.
    pub plaintext_bytes: u64,
}

/// Why an exchange is flagged when a call's chunks did not all arrive.
const LOST: &str = "the kernel could not deliver part of a TLS read or write";

#[derive(Default)]
struct Connection {
    http: Http1Connection,
    sni: Option<String>,
    fd: Option<i32>,
    /// The call whose chunks are arriving: (direction, `call_len`, bytes received).
    call: Option<(Direction, u64, u64)>,
    /// Nothing more is parsed: not HTTP, or a server-side connection.
    skipped: bool,
    /// Any plaintext seen yet.
    started: bool,
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
        if !conn.started {
            conn.started = true;
            if data.direction == Direction::Read && http1::looks_like_http1_request(data.bytes) {
                // This process reads requests: it is the server of this connection.
                conn.skipped = true;
                self.stats.server_connections += 1;
                return Vec::new();
            }
        }
        // Chunks of one call arrive in order; a gap means the kernel dropped some.
        let mut done = Vec::new();
        let continues = matches!(conn.call, Some((dir, len, got)) if dir == data.direction && got == data.offset && got < len);
        if data.offset == 0 {
            if let Some((dir, len, got)) = conn.call
                && got < len
            {
                done.extend(conn.http.mark_lost(http_direction(dir), LOST));
            }
            conn.call = Some((data.direction, data.call_len, 0));
        } else if !continues {
            done.extend(conn.http.mark_lost(http_direction(data.direction), LOST));
            conn.call = Some((data.direction, data.call_len, data.offset));
        }
        if let Some((_, _, got)) = conn.call.as_mut() {
            *got = data.offset + data.bytes.len() as u64;
        }
        match conn
            .http
            .push(http_direction(data.direction), data.end_ns, data.bytes)
        {
            Ok(exchanges) => done.extend(exchanges),
            Err(error) => {
                tracing::warn!(
                    pid = data.tgid,
                    "skipping a TLS connection that is not HTTP/1.1: {error}"
                );
                if matches!(error, http1::Http1Error::Http2Preface) {
                    self.stats.http2_connections += 1;
                }
                self.stats.non_http_connections += 1;
                conn.skipped = true;
            }
        }
        let (sni, peer) = (conn.sni.clone(), self.peer_of(data.tgid, data.ssl));
        done.into_iter()
            .map(|exchange| ConnectionExchange {
                tgid: data.tgid,
                ssl: data.ssl,
                sni: sni.clone(),
                peer,
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
            done.extend(conn.http.mark_lost(http_direction(dir), LOST));
        }
        // A poisoned connection still returns what completed before the error.
        done.extend(conn.http.finish(now_ns));
        done.into_iter()
            .map(|exchange| ConnectionExchange {
                tgid,
                ssl,
                sni: conn.sni.clone(),
                peer,
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

fn http_direction(direction: Direction) -> http1::Direction {
    match direction {
        Direction::Write => http1::Direction::Write,
        Direction::Read => http1::Direction::Read,
    }
}
