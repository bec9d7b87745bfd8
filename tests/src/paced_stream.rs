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
        let request =
            format!("GET {STREAM_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let sent = Instant::now();
        stream.write_all(request.as_bytes())?;
        Ok(StreamFetch { stream, sent })
    }

    /// Reads until `count` events have ended; when each arrived, after the request was sent.
    pub fn arrivals(self, count: usize) -> io::Result<Vec<Duration>> {
        let sent = self.sent;
        let read = self.arrivals_as(count, |stream, buf| {
            let n = stream.read(buf)?;
            Ok((n, Instant::now()))
        })?;
        Ok(read.into_iter().map(|at| at - sent).collect())
    }

    /// Reads until `count` events have ended with `read`, which reads what has arrived
    /// into the buffer and tells when it arrived; for each event, what `read` told for the
    /// read in which it ended.
    pub fn arrivals_as<T: Clone>(
        mut self,
        count: usize,
        mut read: impl FnMut(&mut TcpStream, &mut [u8]) -> io::Result<(usize, T)>,
    ) -> io::Result<Vec<T>> {
        let mut arrivals = Vec::new();
        let mut answer = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while arrivals.len() < count {
            let (n, at) = read(&mut self.stream, &mut buf).map_err(|e| {
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
            answer.extend_from_slice(&buf[..n]);
            let ended = answer.windows(2).filter(|w| w == b"\n\n").count();
            arrivals.resize(ended, at);
        }
        Ok(arrivals)
    }
}
