//! One HTTP/1.1 connection to the target, plain or TLS (verified against the system
//! roots; `SSL_CERT_FILE` honoured), kept alive across requests and opened again when
//! the app closes it. Each driver worker owns one, and drives hyper's connection future
//! itself, in its own task, while a request is out: no second task per connection and
//! no hand-over between them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
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
use tokio::time::{Instant, Sleep};
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

/// hyper's side of an open connection: reads and writes happen while it is polled.
type Driving = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// One worker's connection, opened on first use and again after the app closed it.
pub struct Connection {
    connector: Connector,
    open: Option<(SendRequest<Full<Bytes>>, Driving)>,
    /// The timer that ends an exchange at its deadline ([`Self::send`]).
    watchdog: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    /// A connection not yet opened.
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            open: None,
            watchdog: None,
        }
    }

    /// Sends `request` and reads the whole answer within `timeout`. One timer serves
    /// every exchange on the connection: it stays set for an earlier exchange's deadline
    /// and is moved on only when it fires before the current one's, so an exchange costs
    /// no timer of its own (registering and clearing one per request was about 5% of
    /// the driver's CPU).
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        let deadline = Instant::now() + timeout;
        let mut watchdog = self
            .watchdog
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline)));
        let result = {
            let mut exchange = std::pin::pin!(self.exchange(request));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(answer) = exchange.as_mut().poll(cx) {
                    return Poll::Ready(answer);
                }
                while watchdog.as_mut().poll(cx).is_ready() {
                    if watchdog.deadline() >= deadline {
                        return Poll::Ready(Err(SendError::Timeout { timeout }));
                    }
                    watchdog.as_mut().reset(deadline);
                }
                Poll::Pending
            })
            .await
        };
        self.watchdog = Some(watchdog);
        if result.is_err() {
            // Whatever state the connection is in, the next request gets a fresh one.
            self.open = None;
        }
        result
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, SendError> {
        // A connection the app closed since the last answer has its end of file waiting:
        // one poll of hyper's side sees it, and the request goes on a fresh connection.
        let closed = match &mut self.open {
            Some((_, driving)) => driving
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready(),
            None => true,
        };
        if closed {
            self.open = Some(self.open().await?);
        }
        let (sender, driving) = self.open.as_mut().expect("opened above");
        let exchange = async {
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
        };
        let mut exchange = std::pin::pin!(exchange);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = exchange.as_mut().poll(cx) {
                return Poll::Ready(answer);
            }
            match driving.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                // The connection ended first: the exchange gets its error from the
                // dispatcher now that hyper's side has gone.
                Poll::Ready(Err(source)) => Poll::Ready(Err(SendError::Http { source })),
                Poll::Ready(Ok(())) => exchange.as_mut().poll(cx),
            }
        })
        .await
    }

    async fn open(&self) -> Result<(SendRequest<Full<Bytes>>, Driving), SendError> {
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

async fn handshake<S>(stream: S) -> Result<(SendRequest<Full<Bytes>>, Driving), SendError>
where
    S: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| SendError::Http { source })?;
    Ok((sender, Box::pin(connection)))
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// Reads one request head (these requests have no body).
    async fn read_head(stream: &mut TcpStream) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(
                stream.read(&mut byte).await.unwrap(),
                1,
                "the request ended early"
            );
            head.push(byte[0]);
        }
    }

    fn get(url: &str) -> Request<Full<Bytes>> {
        Request::get(url).body(Full::new(Bytes::new())).unwrap()
    }

    #[tokio::test]
    async fn each_exchange_gets_its_whole_timeout_on_a_connection_s_one_timer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        // Answers the first request at once, then reads the second and never answers.
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            read_head(&mut stream).await;
            std::future::pending::<()>().await;
            drop(stream);
        });
        let connector = Connector::new(Arc::new(Target::parse(&url).unwrap())).unwrap();
        let mut connection = Connection::new(connector);
        let timeout = Duration::from_millis(300);

        let answer = connection.send(get(&url), timeout).await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));
        // The timer is still set for the first exchange's deadline, which comes first.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let sent = StdInstant::now();
        let result = connection.send(get(&url), timeout).await;
        let waited = sent.elapsed();
        assert!(
            matches!(result, Err(SendError::Timeout { .. })),
            "{result:?}"
        );
        assert!(
            waited >= timeout,
            "timed out after {waited:?}, before {timeout:?}"
        );
        assert!(waited < timeout * 5, "timed out only after {waited:?}");
        server.abort();
    }
}
