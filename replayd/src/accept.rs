//! The connection acceptor: one TCP listener serves TLS and plain HTTP alike, over HTTP/1.1
//! and HTTP/2. It peeks at each connection's first byte: `0x16` (a TLS handshake record)
//! starts a TLS handshake with a leaf minted for the client's SNI (or, without SNI, for the
//! original destination's address), offering `h2` and `http/1.1` by ALPN; the protocol the
//! client picks is served (HTTP/1.1 when it picks none). Anything else is plain HTTP: HTTP/2
//! with prior knowledge (h2c) when the connection opens with the HTTP/2 preface, else
//! HTTP/1.1. The kernel redirect, when there is one, tells each connection's original
//! destination through [`OriginalDestination`]. A handshake for a host with no recording
//! still completes; its requests then get the miss policy's answer. A connection's failure
//! (a bad handshake, malformed HTTP) ends that connection only; a handshake the client
//! ends with a certificate alert (it does not trust the replay CA) is also counted in the
//! report, with the client's process and SNI. When the run shuts down
//! ([`Shutdown`]), listeners stop accepting and every connection closes gracefully: HTTP/2
//! ones send GOAWAY and finish the streams under way, HTTP/1.1 ones finish the response
//! under way and close.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;

use crate::ca::{ALPN, H2_ALPN, LeafResolver};
use crate::engine::Engine;
use crate::h2_writes::Unvectored;
use crate::head_timeout;
use crate::io_error::{RESOURCE_BACK_OFF, is_resource_exhaustion, is_transient};
use crate::peer::ClientProcess;
use crate::report::RejectedCa;
use crate::service::{ConnInfo, app};
use crate::workers::WorkersHandle;

/// How long a new connection may stay silent before its first byte.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request head may take to arrive whole, from the connection's start or (on
/// HTTP/1.1) from the end of the answer before it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How many streams an HTTP/2 client may have open at once on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 200;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// The bytes a prior-knowledge HTTP/2 (h2c) client opens a plain connection with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How often a plain connection whose first bytes are a prefix of [`H2_PREFACE`] is
/// looked at again: a peek returns at once while any byte is unread, so waiting for
/// the rest is a poll.
const SNIFF_POLL: Duration = Duration::from_millis(1);

/// Tells the address a redirected client originally connected to, from the client's
/// address as the listener sees it. The redirect module implements it; closures do too.
pub trait OriginalDestination: Send + Sync {
    /// The original destination of the connection from `client`, if the kernel recorded it.
    fn original_destination(&self, client: SocketAddr) -> Option<SocketAddr>;

    /// The process that opened the connection from `client`, when it can be found.
    fn client_process(&self, _client: SocketAddr) -> Option<ClientProcess> {
        None
    }
}

impl<F> OriginalDestination for F
where
    F: Fn(SocketAddr) -> Option<SocketAddr> + Send + Sync,
{
    fn original_destination(&self, client: SocketAddr) -> Option<SocketAddr> {
        self(client)
    }
}

/// Why the acceptor stopped.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Accepting failed in a way that is not about one client.
    #[error("cannot accept connections on {addr}")]
    Accept {
        /// The listener's address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Why one connection ended early; logged, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Waiting for the first byte failed.
    #[error("cannot read from the client")]
    Peek {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The client sent nothing in time.
    #[error("the client sent nothing within {timeout:?}")]
    Silent {
        /// The limit.
        timeout: Duration,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    Handshake {
        /// The I/O error carrying the rustls error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake did not finish within {timeout:?}")]
    HandshakeTimeout {
        /// The limit.
        timeout: Duration,
    },
    /// A plain connection's first bytes were a prefix of the HTTP/2 preface and the rest
    /// did not come in time.
    #[error("the client's first bytes did not tell HTTP/1.1 from HTTP/2 within {timeout:?}")]
    Undecided {
        /// The limit.
        timeout: Duration,
    },
    /// An HTTP/1.1 request head did not come in whole in time ([`crate::head_timeout`]).
    #[error("the client sent no whole request head within {timeout:?}")]
    HeadTimeout {
        /// The limit.
        timeout: Duration,
    },
    /// HTTP on the connection failed (malformed request, client gone).
    #[error("HTTP connection error")]
    Http {
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
}

/// Tells a run's listeners and connections to stop: listeners stop accepting, connections
/// close gracefully (GOAWAY on HTTP/2). [`Shutdown::closed`] waits for every connection
/// (and listener) to be gone.
#[derive(Debug)]
pub struct Shutdown {
    sender: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            sender: watch::Sender::new(false),
        }
    }
}

impl Shutdown {
    /// Starts shutting down.
    pub fn begin(&self) {
        self.sender.send_replace(true);
    }

    /// Resolves once every listener and connection watching this shutdown has ended.
    pub async fn closed(&self) {
        self.sender.closed().await;
    }

    fn watch(&self) -> ShutdownWatch {
        ShutdownWatch(self.sender.subscribe())
    }
}

/// One listener's or connection's view of a [`Shutdown`]; dropping it tells
/// [`Shutdown::closed`] this one is gone.
#[derive(Clone, Debug)]
struct ShutdownWatch(watch::Receiver<bool>);

impl ShutdownWatch {
    /// Resolves when shutdown begins; never without a [`Shutdown`] that can begin.
    async fn begun(&mut self) {
        if self.0.wait_for(|down| *down).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether shutdown has begun since this watch subscribed: the one value a [`Shutdown`]
    /// ever sends is `true`, so any change is the beginning. One atomic load, where a poll
    /// of [`Self::begun`] takes the lock all the watches share.
    fn has_begun(&self) -> bool {
        self.0.has_changed().unwrap_or(false)
    }
}

/// Which HTTP a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// TLS without ALPN `h2`, or a plain connection that did not open with [`H2_PREFACE`].
    Http1,
    /// TLS with ALPN `h2`, or a plain connection that opened with [`H2_PREFACE`].
    Http2,
}

/// Which HTTP a plain connection speaks: HTTP/2 when it opens with [`H2_PREFACE`], else
/// HTTP/1.1. A client that stalls partway through a preface-like start is cut off after
/// [`HEADER_READ_TIMEOUT`], as a slow request head would be.
async fn sniff_plain(stream: &TcpStream) -> Result<Protocol, ConnectionError> {
    let decide = async {
        let mut start = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream
                .peek(&mut start)
                .await
                .map_err(|source| ConnectionError::Peek { source })?;
            if n == 0 || !H2_PREFACE.starts_with(&start[..n]) {
                return Ok(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Ok(Protocol::Http2);
            }
            tokio::time::sleep(SNIFF_POLL).await;
        }
    };
    tokio::time::timeout(HEADER_READ_TIMEOUT, decide)
        .await
        .map_err(|_| ConnectionError::Undecided {
            timeout: HEADER_READ_TIMEOUT,
        })?
}

/// The alert a client ended the handshake with when it refused the server's certificate:
/// `unknown_ca` (OpenSSL, rustls), `certificate_unknown` (the JVM), `bad_certificate`
/// (Go) or `unsupported_certificate`.
fn certificate_alert(error: &io::Error) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(
            alert @ (A::UnknownCA
            | A::CertificateUnknown
            | A::BadCertificate
            | A::UnsupportedCertificate),
        ) => Some(*alert),
        _ => None,
    }
}

/// Most per-destination TLS configurations kept (`--all-hosts` may see many
/// addresses); past it the cache starts over.
const MAX_DESTINATION_CONFIGS: usize = 4096;

/// Accepts connections and serves them from the engine.
#[derive(Clone)]
pub struct Acceptor {
    engine: Arc<Engine>,
    tls: Option<Arc<Tls>>,
    original_destination: Option<Arc<dyn OriginalDestination>>,
    shutdown: ShutdownWatch,
    /// The threads accepted connections are served on.
    workers: WorkersHandle,
}

/// The TLS side: one configuration for clients that send SNI, and one per
/// original destination address for those that may not (the leaf then names
/// the address). Each is built once, so a client's sessions resume across its
/// connections.
struct Tls {
    resolver: Arc<LeafResolver>,
    config: Arc<ServerConfig>,
    by_destination: Mutex<HashMap<IpAddr, Arc<ServerConfig>>>,
}

impl Tls {
    fn config_for(&self, original_destination: Option<SocketAddr>) -> Arc<ServerConfig> {
        let Some(ip) = original_destination.map(|dst| dst.ip()) else {
            return self.config.clone();
        };
        let mut configs = self
            .by_destination
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if configs.len() >= MAX_DESTINATION_CONFIGS && !configs.contains_key(&ip) {
            configs.clear();
        }
        configs
            .entry(ip)
            .or_insert_with(|| Arc::new(self.resolver.server_config_for_ip(ALPN, ip)))
            .clone()
    }
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("tls", &self.tls.is_some())
            .field("original_destination", &self.original_destination.is_some())
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// An acceptor serving plain HTTP only, each connection on one of `workers`' threads.
    pub fn new(engine: Arc<Engine>, workers: WorkersHandle) -> Self {
        Self {
            engine,
            tls: None,
            original_destination: None,
            shutdown: ShutdownWatch(watch::Sender::new(false).subscribe()),
            workers,
        }
    }

    /// Serves TLS too, with leaves from `resolver`.
    #[must_use]
    pub fn with_tls(mut self, resolver: Arc<LeafResolver>) -> Self {
        let config = Arc::new(resolver.server_config(ALPN));
        self.tls = Some(Arc::new(Tls {
            resolver,
            config,
            by_destination: Mutex::default(),
        }));
        self
    }

    /// Asks `lookup` for each connection's original destination.
    #[must_use]
    pub fn with_original_destination(mut self, lookup: Arc<dyn OriginalDestination>) -> Self {
        self.original_destination = Some(lookup);
        self
    }

    /// Stops accepting, and closes connections gracefully, once `shutdown` begins.
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.shutdown = shutdown.watch();
        self
    }

    /// Accepts connections on `listener` until accepting fails for good or shutdown begins,
    /// serving each in its own task.
    pub async fn serve(self, listener: TcpListener) -> Result<(), AcceptError> {
        let addr = listener
            .local_addr()
            .map_err(|source| AcceptError::Accept {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let mut shutdown = self.shutdown.clone();
        let this = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.begun() => return Ok(()),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_transient(&e) => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; backing off");
                    tokio::time::sleep(RESOURCE_BACK_OFF).await;
                    continue;
                }
                Err(source) => return Err(AcceptError::Accept { addr, source }),
            };
            // Moved to the worker's runtime: its reactor is the serving thread's.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot hand the connection over");
                    continue;
                }
            };
            let acceptor = this.clone();
            this.workers.spawn(move || async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => acceptor.serve_logged(stream, peer).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "cannot serve the connection"),
                }
            });
        }
    }

    /// [`Self::serve_connection`], its error logged.
    async fn serve_logged(&self, stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = self.serve_connection(stream, peer).await {
            tracing::debug!(%peer, error = %llmsim_snapshot::error_chain(&e), "connection ended with an error");
        }
    }

    /// Serves one accepted connection.
    pub async fn serve_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), ConnectionError> {
        // Replies are small and latency matters: no Nagle.
        let _ = stream.set_nodelay(true);
        let original_destination = self
            .original_destination
            .as_ref()
            .and_then(|lookup| lookup.original_destination(peer));
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first))
            .await
            .map_err(|_| ConnectionError::Silent {
                timeout: FIRST_BYTE_TIMEOUT,
            })?
            .map_err(|source| ConnectionError::Peek { source })?;
        if peeked == 0 {
            return Ok(());
        }
        let mut info = ConnInfo {
            peer: Some(peer),
            original_destination,
            tls: false,
            sni: None,
        };
        match &self.tls {
            Some(tls) if first[0] == TLS_HANDSHAKE => {
                let config = tls.config_for(original_destination);
                let tls =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(stream, peer, config))
                        .await
                        .map_err(|_| ConnectionError::HandshakeTimeout {
                            timeout: HANDSHAKE_TIMEOUT,
                        })??;
                info.tls = true;
                let session = tls.get_ref().1;
                info.sni = session.server_name().map(str::to_owned);
                let protocol = if session.alpn_protocol() == Some(H2_ALPN) {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                self.serve_http(TokioIo::new(tls), info, protocol).await
            }
            _ => {
                let protocol = sniff_plain(&stream).await?;
                self.serve_http(TokioIo::new(stream), info, protocol).await
            }
        }
    }

    /// The TLS handshake with the client at `peer`. When the client ends it with a
    /// certificate alert, the client is counted as one that rejects the replay CA, named by
    /// its process and the SNI it sent.
    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        config: Arc<ServerConfig>,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, ConnectionError> {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(|source| ConnectionError::Handshake { source })?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        // Before the handshake goes on: a client that refuses the certificate closes its
        // socket right after its alert, and its process is then no longer to be found.
        let process = match self.original_destination.clone() {
            Some(lookup) => tokio::task::spawn_blocking(move || lookup.client_process(peer))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        match start.into_stream(config).await {
            Ok(tls) => Ok(tls),
            Err(source) => {
                if let Some(alert) = certificate_alert(&source) {
                    self.engine.count_rejected_ca(RejectedCa {
                        pid: process.as_ref().map(|p| p.pid),
                        command: process.map(|p| p.command),
                        sni,
                        alert: format!("{alert:?}"),
                    });
                }
                Err(ConnectionError::Handshake { source })
            }
        }
    }

    /// Serves HTTP over `io` as `protocol` until the connection ends; an h2 connection's
    /// writes are batched ([`crate::h2_writes`]).
    async fn serve_http<I>(
        &self,
        io: I,
        info: ConnInfo,
        protocol: Protocol,
    ) -> Result<(), ConnectionError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = app(self.engine.clone(), info);
        match protocol {
            Protocol::Http1 => {
                let (service, mut head) = head_timeout::watch(service, HEADER_READ_TIMEOUT);
                let connection = http1::Builder::new()
                    .keep_alive(true)
                    // An answer's head and body copied into one buffer and sent with one
                    // `write`, rather than gathered by `writev`: a recorded answer is small,
                    // and the copy costs less than the vectored write (about 4% more
                    // requests a second in `bench replay --only sdk-post`'s load).
                    .writev(false)
                    .serve_connection(io, service);
                self.until_shutdown(connection, http1::Connection::graceful_shutdown, |cx| {
                    head.poll_overdue(cx)
                })
                .await
            }
            Protocol::Http2 => {
                let connection = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                    .serve_connection(Unvectored(io), service);
                self.until_shutdown(connection, http2::Connection::graceful_shutdown, |_| false)
                    .await
            }
        }
    }

    /// Runs `connection` to its end, asking it to close gracefully (`graceful`) once
    /// shutdown begins, and ending it when `head_overdue` tells that a request head came
    /// too late. The shutdown's future is polled once, which is enough for it to wake the
    /// task when shutdown begins; every later wake-up only reads [`ShutdownWatch::has_begun`].
    /// Polling that future at each of the connection's wake-ups took a lock shared by every
    /// connection of every serving thread: about 3% of the requests a second under load.
    async fn until_shutdown<C>(
        &self,
        connection: C,
        graceful: fn(Pin<&mut C>),
        mut head_overdue: impl FnMut(&mut Context<'_>) -> bool,
    ) -> Result<(), ConnectionError>
    where
        C: Future<Output = hyper::Result<()>>,
    {
        let mut registration = self.shutdown.clone();
        let begun = registration.begun();
        tokio::pin!(connection, begun);
        let mut watching = true;
        let mut closing = false;
        std::future::poll_fn(|cx| {
            if watching {
                watching = false;
                let _ = begun.as_mut().poll(cx);
            }
            if !closing && self.shutdown.has_begun() {
                closing = true;
                graceful(connection.as_mut());
            }
            match connection.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    Poll::Ready(result.map_err(|source| ConnectionError::Http { source }))
                }
                Poll::Pending if head_overdue(cx) => {
                    Poll::Ready(Err(ConnectionError::HeadTimeout {
                        timeout: HEADER_READ_TIMEOUT,
                    }))
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use serde_json::json;
    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::options::ReplayOptions;
    use crate::testutil;
    use crate::workers::Workers;

    /// The protocol [`sniff_plain`] tells for a connection whose client wrote `start` and
    /// then waits.
    async fn sniffed(start: &[u8]) -> Result<Protocol, ConnectionError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.write_all(start).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let protocol = sniff_plain(&server).await;
        drop(client);
        protocol
    }

    #[tokio::test(start_paused = true)]
    async fn a_plain_connection_is_told_by_its_first_bytes() {
        assert_eq!(sniffed(H2_PREFACE).await.unwrap(), Protocol::Http2);
        assert_eq!(
            sniffed(b"GET / HTTP/1.1\r\n").await.unwrap(),
            Protocol::Http1
        );
        // "PUT" shares its first byte with the preface.
        assert_eq!(
            sniffed(b"PUT /x HTTP/1.1\r\n").await.unwrap(),
            Protocol::Http1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_stalling_inside_the_preface_is_cut_off() {
        let stalled = sniffed(&H2_PREFACE[..10]).await;
        assert!(
            matches!(stalled, Err(ConnectionError::Undecided { timeout }) if timeout == HEADER_READ_TIMEOUT),
            "{stalled:?}"
        );
    }

    /// The answer of [`serve_plain`]'s one recording.
    fn ok_answer() -> serde_json::Value {
        json!({"ok": true})
    }

    /// A plain HTTP/1.1 connection served by an acceptor (on one worker thread, watching
    /// `shutdown`) from a recording answering `prompt` with [`ok_answer`]: the client's end,
    /// the request for that recording, and the task serving the connection. The workers
    /// must outlive the connection.
    fn serve_plain(
        prompt: &str,
        workers: &Workers,
        shutdown: &Shutdown,
    ) -> (
        tokio::io::DuplexStream,
        String,
        tokio::task::JoinHandle<Result<(), ConnectionError>>,
    ) {
        let dir = testutil::snapshot(&[testutil::exchange(prompt, ok_answer())]);
        let engine = crate::run::load_engine(dir.path(), ReplayOptions::default()).unwrap();
        let acceptor = Acceptor::new(Arc::new(engine), workers.handle()).with_shutdown(shutdown);
        let (client, server_io) = tokio::io::duplex(1 << 16);
        let info = ConnInfo {
            sni: Some("api.openai.com".to_owned()),
            ..ConnInfo::default()
        };
        let served = tokio::spawn(async move {
            acceptor
                .serve_http(TokioIo::new(server_io), info, Protocol::Http1)
                .await
        });
        let body = testutil::chat(prompt).to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: api.openai.com\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        (client, request, served)
    }

    /// Sends `request` on `client` and reads until [`ok_answer`] has arrived; what arrived.
    async fn exchange(client: &mut tokio::io::DuplexStream, request: &str) -> Vec<u8> {
        client.write_all(request.as_bytes()).await.unwrap();
        let answer = serde_json::to_vec(&ok_answer()).unwrap();
        let mut received = Vec::new();
        while !received.ends_with(&answer) {
            let mut chunk = [0u8; 4096];
            let n = tokio::io::AsyncReadExt::read(client, &mut chunk)
                .await
                .unwrap();
            assert!(n > 0, "the connection closed before the answer");
            received.extend_from_slice(&chunk[..n]);
        }
        received
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_head_that_stalls_is_cut_off_after_the_header_read_timeout() {
        let workers = Workers::start(1).unwrap();
        let (mut client, request, served) = serve_plain("stall", &workers, &Shutdown::default());
        // hyper times each head from the end of the answer before it: a connection idle
        // for most of the timeout, twice, is still served...
        let mut answered_at = tokio::time::Instant::now();
        for idle in [HEADER_READ_TIMEOUT.saturating_sub(Duration::from_secs(1)); 2] {
            tokio::time::advance(idle).await;
            let received = exchange(&mut client, &request).await;
            assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
            answered_at = tokio::time::Instant::now();
        }
        // ...and a head that stops halfway ends it when the timeout runs out.
        client
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: api.o")
            .await
            .unwrap();
        let ended = served.await.unwrap();
        assert!(
            matches!(&ended, Err(ConnectionError::HeadTimeout { timeout }) if *timeout == HEADER_READ_TIMEOUT),
            "{ended:?}"
        );
        assert_eq!(answered_at.elapsed(), HEADER_READ_TIMEOUT);
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_closes_when_shutdown_begins() {
        let workers = Workers::start(1).unwrap();
        let shutdown = Shutdown::default();
        let (mut client, request, served) = serve_plain("idle", &workers, &shutdown);
        // Two answers, so the connection has been woken and polled many times since the
        // shutdown's future was first polled.
        for _ in 0..2 {
            exchange(&mut client, &request).await;
        }
        shutdown.begin();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut rest),
        )
        .await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "the idle connection stayed open: {closed:?}"
        );
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }

    /// A transport with vectored writes (as TCP and TLS have) that counts the writes
    /// reaching it.
    struct CountedWrites<T> {
        inner: T,
        writes: Arc<AtomicUsize>,
    }

    impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for CountedWrites<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for CountedWrites<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            Pin::new(&mut self.inner).poll_write(cx, &joined)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn h2_answers_ready_together_go_out_in_one_write() {
        const STREAMS: usize = 8;
        // 8 answers of 1.5 KiB: above h2's chaining threshold, and together within its
        // 16 KiB frame buffer.
        let answer = json!({"pad": "x".repeat(1500)});
        let dir = testutil::snapshot(&[testutil::exchange("batched", answer.clone())]);
        let engine = crate::run::load_engine(dir.path(), ReplayOptions::default()).unwrap();
        let workers = Workers::start(1).unwrap();
        let acceptor = Acceptor::new(Arc::new(engine), workers.handle());
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let server = CountedWrites {
            inner: TokioIo::new(server_io),
            writes: writes.clone(),
        };
        let info = ConnInfo {
            peer: None,
            original_destination: None,
            tls: true,
            sni: Some("api.openai.com".to_owned()),
        };
        tokio::spawn(async move { acceptor.serve_http(server, info, Protocol::Http2).await });
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
                .await
                .unwrap();
        tokio::spawn(connection);
        let ask = move || {
            let mut sender = sender.clone();
            async move {
                let request = http::Request::post("https://api.openai.com/v1/chat/completions")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(
                        testutil::chat("batched").to_string(),
                    )))
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), http::StatusCode::OK);
                response.into_body().collect().await.unwrap().to_bytes()
            }
        };
        let expected = serde_json::to_vec(&answer).unwrap();
        assert_eq!(
            ask().await,
            expected,
            "the first answer, on a settled connection"
        );
        let before = writes.load(Ordering::Relaxed);
        let mut asked = tokio::task::JoinSet::new();
        for _ in 0..STREAMS {
            asked.spawn(ask());
        }
        for answer in asked.join_all().await {
            assert_eq!(answer, expected, "every answer whole");
        }
        let taken = writes.load(Ordering::Relaxed) - before;
        assert_eq!(
            taken, 1,
            "{STREAMS} answers ready together took {taken} writes"
        );
    }
}
