//! A recorded event stream for pacing measurements: a snapshot of one `GET /v1/stream`
//! whose events `{"n":i}` are due at given offsets, and a plain HTTP/1.1 client that notes
//! when each event arrives.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::snapshot::write_exchanges;

/// The path the stream is recorded at.
pub const STREAM_PATH: &str = "/v1/stream";

/// Writes into `dir` a snapshot of one `GET /v1/stream` answered with one event per offset
/// (ms after the request), `{"n":i}` for the i-th.
pub fn write_stream_snapshot(dir: &Path, offsets: &[f64]) {
    let events: Vec<_> = offsets
        .iter()
        .enumerate()
        .map(|(n, offset)| json!({"offset_ms": offset, "data": json!({"n": n}).to_string()}))
        .collect();
    write_exchanges(
        dir,
        [json!({
            "ttfb_ms": offsets[0], "duration_ms": offsets[offsets.len() - 1], "streamed": true,
            "request": {"method": "GET", "path": STREAM_PATH, "headers": [], "body": {"kind": "empty"}},
            "response": {"status": 200, "headers": [["content-type", "text/event-stream"]],
                         "body": {"kind": "sse", "events": events}}
        })],
    );
}

/// The request for the stream, to replayd at `addr`.
pub fn stream_request(addr: SocketAddr) -> String {
    format!("GET {STREAM_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// Counts the events that have ended (a blank line, `\n\n`) in an answer read in pieces.
#[derive(Clone, Debug, Default)]
pub struct EndedEvents {
    ended: usize,
    /// The last byte taken in, so a blank line split between two reads is counted.
    last: u8,
}

impl EndedEvents {
    /// Takes in the next bytes read; how many events have ended so far.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        for &byte in bytes {
            if byte == b'\n' && self.last == b'\n' {
                self.ended += 1;
            }
            self.last = byte;
        }
        self.ended
    }
}

/// One request for the stream, sent; its events are read with [`StreamFetch::arrivals`].
pub struct StreamFetch {
    stream: TcpStream,
    /// When the request was sent: arrivals count from here.
    pub sent: Instant,
}

impl StreamFetch {
    /// Sends `GET /v1/stream` to `addr` on the connected `stream`.
    pub fn start(mut stream: TcpStream, addr: SocketAddr) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let request = stream_request(addr);
        let sent = Instant::now();
        stream.write_all(request.as_bytes())?;
        Ok(StreamFetch { stream, sent })
    }

    /// Reads until `count` events have ended; when each arrived, after the request was sent.
    pub fn arrivals(mut self, count: usize) -> io::Result<Vec<Duration>> {
        let mut arrivals = Vec::new();
        let mut ended = EndedEvents::default();
        let mut buf = [0u8; 16 * 1024];
        while arrivals.len() < count {
            let n = self.stream.read(&mut buf).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reading the stream after {} events: {e}", arrivals.len()),
                )
            })?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the stream ended after {} of {count} events",
                        arrivals.len()
                    ),
                ));
            }
            arrivals.resize(ended.feed(&buf[..n]), self.sent.elapsed());
        }
        Ok(arrivals)
    }
}

#[cfg(test)]
mod tests {
    use super::EndedEvents;

    #[test]
    fn events_are_counted_at_their_blank_line_even_split_between_reads() {
        let mut ended = EndedEvents::default();
        assert_eq!(
            ended.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"),
            0,
            "the head's end is not an event's"
        );
        assert_eq!(ended.feed(b"data: {\"n\":0}\n"), 0);
        assert_eq!(ended.feed(b"\ndata: {\"n\":1}\n\ndata: "), 2);
        assert_eq!(ended.feed(b"{\"n\":2}\n\n"), 3);
    }
}
