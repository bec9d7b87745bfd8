//! The connection acceptor: one TCP listener serves TLS and plain HTTP alike. It peeks at
//! each connection's first byte: `0x16` (a TLS handshake record) starts a TLS handshake with
//! a leaf minted for the client's SNI (or, without SNI, for the original destination's
//! address), anything else is plain HTTP/1.1. The kernel redirect, when there is one, tells
//! each connection's original destination through [`OriginalDestination`]. A handshake for a
//! host with no recording still completes; its requests then get the miss policy's answer.
//! A connection's failure (a bad handshake, malformed HTTP) ends that connection only.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::ca::{HTTP11_ALPN, LeafResolver};
use crate::engine::Engine;
use crate::io_error::{RESOURCE_BACK_OFF, is_resource_exhaustion, is_transient};
use crate::service::{ConnInfo, app};

/// How long a new connection may stay silent before its first byte.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request head may take to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Tells the address a redirected client originally connected to, from the client's
/// address as the listener sees it. The redirect module implements it; closures do too.
pub trait OriginalDestination: Send + Sync {
    /// The original destination of the connection from `client`, if the kernel recorded it.
    fn original_destination(&self, client: SocketAddr) -> Option<SocketAddr>;
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
    /// HTTP on the connection failed (malformed request, client gone).
    #[error("HTTP connection error")]
    Http {
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
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
            .or_insert_with(|| Arc::new(self.resolver.server_config_for_ip(HTTP11_ALPN, ip)))
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
    /// An acceptor serving plain HTTP only.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            tls: None,
            original_destination: None,
        }
    }

    /// Serves TLS too, with leaves from `resolver`.
    #[must_use]
    pub fn with_tls(mut self, resolver: Arc<LeafResolver>) -> Self {
        let config = Arc::new(resolver.server_config(HTTP11_ALPN));
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

    /// Accepts connections on `listener` until accepting fails for good, serving each in
    /// its own task.
    pub async fn serve(self, listener: TcpListener) -> Result<(), AcceptError> {
        let addr = listener
            .local_addr()
            .map_err(|source| AcceptError::Accept {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let this = Arc::new(self);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) if is_transient(&e) => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; backing off");
                    tokio::time::sleep(RESOURCE_BACK_OFF).await;
                    continue;
                }
                Err(source) => return Err(AcceptError::Accept { addr, source }),
            };
            let this = this.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve_connection(stream, peer).await {
                    tracing::debug!(%peer, error = %llmsim_snapshot::error_chain(&e), "connection ended with an error");
                }
            });
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
                let tls = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    TlsAcceptor::from(config).accept(stream),
                )
                .await
                .map_err(|_| ConnectionError::HandshakeTimeout {
                    timeout: HANDSHAKE_TIMEOUT,
                })?
                .map_err(|source| ConnectionError::Handshake { source })?;
                info.tls = true;
                info.sni = tls.get_ref().1.server_name().map(str::to_owned);
                self.serve_http(TokioIo::new(tls), info).await
            }
            _ => self.serve_http(TokioIo::new(stream), info).await,
        }
    }

    async fn serve_http<I>(&self, io: I, info: ConnInfo) -> Result<(), ConnectionError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin,
    {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .serve_connection(io, app(self.engine.clone(), info))
            .await
            .map_err(|source| ConnectionError::Http { source })
    }
}
