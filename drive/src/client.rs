//! One HTTP/1.1 connection to the target, plain or TLS (verified against the system
//! roots; `SSL_CERT_FILE` honoured), kept alive across requests and opened again when
//! the app closes it. Each driver worker owns one.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::plan::Target;

/// Why https cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// No usable root certificate.
    #[error("no root certificates for https targets: {reason}")]
    Roots {
        /// What went wrong.
        reason: String,
    },
    /// The target's host is not a valid TLS server name.
    #[error("{host:?} is not a TLS server name")]
    ServerName {
        /// The host.
        host: String,
    },
}

/// Why one request got no answer: the kinds the summary counts errors by.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection (TCP or TLS) could not be made.
    #[error("cannot connect")]
    Connect {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// No whole answer within `--timeout`.
    #[error("no answer within {timeout:?}")]
    Timeout {
        /// The timeout.
        timeout: Duration,
    },
    /// The exchange failed at the HTTP level (the connection closed, a malformed answer).
    #[error("HTTP error")]
    Http {
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
}

impl SendError {
    /// The kind, as the summary and the metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Http { .. } => "http",
        }
    }
}

/// An answer, whole.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body bytes, as received (Content-Encoding not undone).
    pub body: Bytes,
}

/// How to reach the target; cheap to clone, one per worker.
#[derive(Clone)]
pub struct Connector {
    target: Arc<Target>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Connector {
    /// The connector for `target`; https loads the system roots once.
    pub fn new(target: Arc<Target>) -> Result<Self, TlsSetupError> {
        let tls = if target.tls {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(TlsSetupError::Roots {
                    reason: loaded
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_owned(), ToString::to_string),
                });
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsSetupError::Roots {
                    reason: e.to_string(),
                })?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(target.host.clone()).map_err(|_| {
                TlsSetupError::ServerName {
                    host: target.host.clone(),
                }
            })?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self { target, tls })
    }

    /// The target.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }
}

/// One worker's connection, opened on first use and again after the app closed it.
pub struct Connection {
    connector: Connector,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection not yet opened.
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            sender: None,
        }
    }

    /// Sends `request` and reads the whole answer within `timeout`.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        let result = tokio::time::timeout(timeout, self.exchange(request)).await;
        let result = result.unwrap_or(Err(SendError::Timeout { timeout }));
        if result.is_err() {
            // Whatever state the connection is in, the next request gets a fresh one.
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, SendError> {
        let ready = match &mut self.sender {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            self.sender = Some(self.open().await?);
        }
        let sender = self.sender.as_mut().expect("opened above");
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| SendError::Http { source })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|source| SendError::Http { source })?
            .to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let connect = |source| SendError::Connect { source };
        let tcp = TcpStream::connect(self.connector.target.address())
            .await
            .map_err(connect)?;
        tcp.set_nodelay(true).map_err(connect)?;
        match &self.connector.tls {
            None => handshake(tcp).await,
            Some((tls, name)) => {
                handshake(tls.connect(name.clone(), tcp).await.map_err(connect)?).await
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, SendError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| SendError::Http { source })?;
    tokio::spawn(connection);
    Ok(sender)
}
