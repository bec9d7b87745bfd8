//! Misses that go to the real host: `--on-miss passthrough` forwards a request with no
//! recording to the host the app asked for ([`UpstreamAddr`]) and streams the answer back as
//! it arrives (server-sent events included); `--on-miss record` does the same and appends
//! the new exchange to the snapshot through the snapshot's [`SnapshotRecorder`], exactly as
//! capture records (same host rule, redaction, usage summary and writer). When an answer
//! ends, the finished exchange ([`Forwarded`]) goes back to whoever asked for the forward,
//! which counts it and, under record, serves it to later identical requests of the run;
//! this module knows nothing of the engine or the statistics. `--budget USD` prices every
//! forwarded exchange and refuses forwards once the live spend would exceed the budget.
//!
//! replayd's own process is exempt from the cgroup redirect, so its connects and DNS go out
//! normally; certificates are verified against the system roots (`SSL_CERT_FILE` honoured).
//! One connection per forward: misses are rare, and a connection per forward keeps a
//! broken upstream from poisoning the next one. Over TLS, replayd offers `h2` and
//! `http/1.1` by ALPN and speaks HTTP/2 when the real host picks it (the exchange then says
//! so); plain HTTP is forwarded over HTTP/1.1.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use llmsim_snapshot::authority::Authority;
use llmsim_snapshot::config::ConfigError;
use llmsim_snapshot::ledger::CallLine;
use llmsim_snapshot::model::{Direction, Exchange, Headers, HttpVersion, ProcessInfo, Scheme};
use llmsim_snapshot::prices::{PriceError, PriceTable};
use llmsim_snapshot::record::{
    self, RawExchange, RawRequest, RawResponse, RecordError, SnapshotRecorder,
};
use llmsim_snapshot::redact::RedactError;
use llmsim_snapshot::store::StoreError;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::body::ReplayBody;
use crate::options::OnMiss;
use crate::request::ReplayRequest;
use crate::response::is_hop_by_hop;

/// Frames buffered between the real host and the app.
const STREAM_BUFFER: usize = 64;

/// Why forwarding could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// The system trust store could not be read, or held no usable certificate.
    #[error("cannot load the system root certificates for forwarding: {reason}")]
    Roots {
        /// What went wrong (rustls-native-certs reports several errors at once).
        reason: String,
    },
    /// The `--prices` file could not be loaded.
    #[error("cannot load the prices for --budget")]
    Prices(#[from] PriceError),
    /// The budget is not a finite, non-negative number of dollars.
    #[error("--budget {value} is not a non-negative number of dollars")]
    Budget {
        /// The value given.
        value: f64,
    },
    /// The snapshot's `llmsim.toml` could not be read (for its `[redact]` rules).
    #[error(transparent)]
    Config(ConfigError),
    /// The redactor or the per-machine key could not be set up.
    #[error("cannot set up redaction for --on-miss record")]
    Redact(#[source] RedactError),
    /// The snapshot directory cannot be appended to.
    #[error("cannot open the snapshot for --on-miss record")]
    Writer(#[source] StoreError),
}

impl From<RecordError> for UpstreamSetupError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::Config(e) => Self::Config(e),
            RecordError::Redaction(e) => Self::Redact(e),
            RecordError::Store(e) => Self::Writer(e),
        }
    }
}

/// Why one forward failed; the app gets a 502.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request named no host to forward to.
    #[error("the request names no host to forward to")]
    NoHost,
    /// The host is this machine: through `--listen` with a base URL, that is replayd itself.
    #[error(
        "{host} is this machine, not a real API host (with --listen, send the real host in \
         the Host header)"
    )]
    Loopback {
        /// The host.
        host: String,
    },
    /// The host is not a name a certificate can be checked against.
    #[error("{host:?} is not a valid TLS server name")]
    ServerName {
        /// The host.
        host: String,
        /// What rustls said.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// Resolving or connecting failed.
    #[error("cannot connect to {target}")]
    Connect {
        /// `host:port`.
        target: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed (a certificate that does not verify, among others).
    #[error("the TLS handshake with {target} failed")]
    Tls {
        /// `host:port`.
        target: String,
        /// The I/O error carrying rustls's reason.
        #[source]
        source: io::Error,
    },
    /// The request could not be built from what the app sent.
    #[error("cannot build the forwarded request")]
    Build {
        /// What `http` said.
        #[source]
        source: http::Error,
    },
    /// HTTP with the real host failed before its answer's head arrived.
    #[error("HTTP with {target} failed")]
    Http {
        /// `host:port`.
        target: String,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
}

/// The live spend reached `--budget`.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error(
    "the --budget of ${budget_usd:.4} is exhausted (live spend ${spent_usd:.4}); \
     no more requests are passed through to the real API"
)]
pub struct BudgetExhausted {
    /// The budget in dollars.
    pub budget_usd: f64,
    /// What forwarded requests cost so far.
    pub spent_usd: f64,
}

/// Which roots verify the real hosts' certificates.
#[derive(Clone, Debug, Default)]
pub enum Roots {
    /// The system's (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured).
    #[default]
    System,
    /// These (tests).
    Custom(RootCertStore),
}

/// How misses are forwarded.
#[derive(Clone, Debug, Default)]
pub struct UpstreamSettings {
    /// `--on-miss`: forwarding is on for passthrough and record.
    pub on_miss: OnMiss,
    /// `--budget`: dollars the run may spend live.
    pub budget_usd: Option<f64>,
    /// `--prices`: a price file overriding the built-in table.
    pub prices: Option<PathBuf>,
    /// The certificate roots.
    pub roots: Roots,
    /// Where the per-machine redaction key lives (default: the user's data directory, as
    /// for capture).
    pub redaction_dir: Option<PathBuf>,
    /// Connect every forward to this address instead of resolving the host (tests: a
    /// local server standing in for the real host; the host still names SNI and `Host`).
    pub connect_to: Option<SocketAddr>,
}

/// The real host a miss is forwarded to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// The host the app asked for, without a port.
    pub host: String,
    /// The port to connect to.
    pub port: u16,
    /// Whether to speak TLS.
    pub tls: bool,
}

impl UpstreamAddr {
    /// The real host for a miss on a connection: the app's host (`host`, `host:port`,
    /// `[v6]:port`), on the original destination's port when the redirect knows it, else the
    /// host's own port, else 443 for TLS and 80 for plain HTTP.
    pub fn of(host: &str, tls: bool, original_port: Option<u16>) -> Self {
        let authority = Authority::parse(host);
        let port = original_port
            .or(authority.port)
            .unwrap_or(if tls { 443 } else { 80 });
        Self {
            host: authority.host.to_owned(),
            port,
            tls,
        }
    }
}

impl fmt::Display for UpstreamAddr {
    /// `host:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A forward whose answer has ended, handed back to whoever asked for it.
#[derive(Debug)]
pub struct Forwarded {
    /// The exchange as stored (redacted under record), with its usage summary.
    pub exchange: Exchange,
    /// Its tokens and live cost under the run's prices.
    pub call: CallLine,
    /// What `--on-miss record` did with it.
    pub recording: Recording,
}

/// What `--on-miss record` did with a forwarded exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Recording {
    /// Nothing: the run passes misses through without recording.
    Off,
    /// Nothing: the exchange is incomplete.
    Incomplete,
    /// Appended to the snapshot, in this file.
    Written(PathBuf),
    /// Writing it failed (logged).
    Failed,
}

/// The live spend against the budget.
#[derive(Debug, Default)]
struct Spend {
    spent_usd: f64,
    /// The most one forward cost so far: the estimate for the next.
    largest_usd: f64,
}

/// Forwards misses; shared by every connection of a run.
#[derive(Debug)]
pub struct Upstream {
    tls: Arc<ClientConfig>,
    connect_to: Option<SocketAddr>,
    prices: PriceTable,
    budget_usd: Option<f64>,
    spend: Mutex<Spend>,
    recorder: Option<Mutex<SnapshotRecorder>>,
}

impl Upstream {
    /// Sets forwarding up for the snapshot in `dir`; `None` under `--on-miss fail`.
    pub fn new(
        dir: &std::path::Path,
        settings: UpstreamSettings,
    ) -> Result<Option<Self>, UpstreamSetupError> {
        if settings.on_miss == OnMiss::Fail {
            return Ok(None);
        }
        if let Some(value) = settings.budget_usd
            && !(value.is_finite() && value >= 0.0)
        {
            return Err(UpstreamSetupError::Budget { value });
        }
        let roots = match settings.roots {
            Roots::Custom(roots) => roots,
            Roots::System => system_roots()?,
        };
        let mut config = ClientConfig::builder_with_provider(crate::ca::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamSetupError::Roots {
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = crate::ca::ALPN.iter().map(|p| p.to_vec()).collect();
        let recorder = if settings.on_miss == OnMiss::Record {
            Some(Mutex::new(SnapshotRecorder::open(
                dir,
                settings.redaction_dir.as_deref(),
            )?))
        } else {
            None
        };
        Ok(Some(Self {
            tls: Arc::new(config),
            connect_to: settings.connect_to,
            prices: PriceTable::load(settings.prices.as_deref())?,
            budget_usd: settings.budget_usd,
            spend: Mutex::new(Spend::default()),
            recorder,
        }))
    }

    /// Whether forwarded exchanges are appended to the snapshot.
    pub fn records(&self) -> bool {
        self.recorder.is_some()
    }

    /// Refuses a forward when the spend so far, plus what the costliest forward cost, would
    /// exceed the budget. Forwards already under way are not stopped, so concurrent ones
    /// can overshoot by what they cost.
    pub fn admit(&self) -> Result<(), BudgetExhausted> {
        let Some(budget_usd) = self.budget_usd else {
            return Ok(());
        };
        let spend = self.spend.lock().unwrap_or_else(PoisonError::into_inner);
        if spend.spent_usd >= budget_usd || spend.spent_usd + spend.largest_usd > budget_usd {
            return Err(BudgetExhausted {
                budget_usd,
                spent_usd: spend.spent_usd,
            });
        }
        Ok(())
    }

    /// The budget, if any.
    pub fn budget_usd(&self) -> Option<f64> {
        self.budget_usd
    }

    /// Forwards `request` to `to` and answers with the real host's status and headers
    /// (hop-by-hop ones dropped), a body streamed as it arrives, and its trailers. When the
    /// body ends, the exchange is priced and (under record) written, and handed to `done`;
    /// only then does the app's body end, so whatever `done` does (counting it, serving it to
    /// the next identical request) is in place once the app has its answer.
    pub async fn forward(
        self: &Arc<Self>,
        to: UpstreamAddr,
        request: ReplayRequest,
        done: impl FnOnce(Forwarded) + Send + 'static,
    ) -> Result<Response<ReplayBody>, ForwardError> {
        if to.host.is_empty() {
            return Err(ForwardError::NoHost);
        }
        if self.connect_to.is_none() && is_loopback_name(&to.host) {
            return Err(ForwardError::Loopback { host: to.host });
        }
        let described = to.to_string();
        let (mut sender, peer) = self.open(&to, &described).await?;
        let outgoing = outgoing_request(&request, &to, sender.version())?;
        let started_at = OffsetDateTime::now_utc();
        let started = Instant::now();
        let response = sender
            .send(outgoing)
            .await
            .map_err(|source| ForwardError::Http {
                target: described.clone(),
                source,
            })?;
        let first_byte_ms = ms_since(started);
        let (parts, mut incoming) = response.into_parts();
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut answer = RawResponse {
            status: parts.status.as_u16(),
            headers: record::headers(&parts.headers),
            first_byte_ms,
            body: Vec::new(),
            trailers: Headers::default(),
        };
        let http_version = if parts.version == http::Version::HTTP_2 {
            HttpVersion::Http2
        } else {
            HttpVersion::Http11
        };
        let (frames, receiver) = mpsc::channel(STREAM_BUFFER);
        let (trailers_to_app, app_trailers) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let _sender = sender;
            let broke_off = relay(
                &mut incoming,
                &mut answer,
                started,
                &frames,
                trailers_to_app,
            )
            .await;
            let described = request.describe();
            let raw = RawExchange {
                request: RawRequest {
                    method: request.method,
                    target: request.path,
                    headers: record::headers(&request.headers),
                    body: request.body,
                },
                response: Some(answer),
                started_at,
                duration_ms: ms_since(started),
                // The name replayd's own TLS connection sent.
                sni: to.tls.then(|| to.host.clone()),
                peer,
                // The app's process is not known to the listener; replayd made the request.
                process: ProcessInfo {
                    pid: std::process::id(),
                    comm: "replayd".to_owned(),
                    exe: None,
                },
                direction: Direction::Outbound,
                scheme: if to.tls { Scheme::Https } else { Scheme::Http },
                http_version,
                incomplete: broke_off,
            };
            done(this.finish(raw, &described));
            drop(frames);
        });
        let mut response = Response::new(ReplayBody::stream_with_trailers(
            receiver,
            Some(app_trailers),
        ));
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// A connection to `to` (TLS verified against the roots; HTTP/2 when the host picks it
    /// by ALPN), ready for one request, and the address it reached.
    async fn open(
        &self,
        to: &UpstreamAddr,
        described: &str,
    ) -> Result<(SendRequest, Option<SocketAddr>), ForwardError> {
        let connect = match self.connect_to {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((to.host.as_str(), to.port)).await,
        };
        let stream = connect.map_err(|source| ForwardError::Connect {
            target: described.to_owned(),
            source,
        })?;
        // Small writes (a request, then nothing) must not wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        let sender = if to.tls {
            let name = ServerName::try_from(to.host.clone()).map_err(|source| {
                ForwardError::ServerName {
                    host: to.host.clone(),
                    source,
                }
            })?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, stream)
                .await
                .map_err(|source| ForwardError::Tls {
                    target: described.to_owned(),
                    source,
                })?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(crate::ca::H2_ALPN);
            handshake(TokioIo::new(tls), h2, described).await?
        } else {
            handshake(TokioIo::new(stream), false, described).await?
        };
        Ok((sender, peer))
    }

    /// Builds, prices and (under record) stores one forwarded exchange; `described` names
    /// its request in log lines.
    fn finish(&self, raw: RawExchange<Bytes>, described: &str) -> Forwarded {
        let (exchange, recording) = if let Some(recorder) = &self.recorder {
            let mut recorder = recorder.lock().unwrap_or_else(PoisonError::into_inner);
            let exchange = recorder.exchange(raw);
            let recording = if exchange.incomplete.is_some() {
                tracing::warn!("not recording {described}: the exchange is incomplete");
                Recording::Incomplete
            } else {
                match recorder.write(&exchange) {
                    Ok(path) => {
                        tracing::info!(file = %path.display(), "recorded a new exchange");
                        Recording::Written(path)
                    }
                    Err(e) => {
                        tracing::error!(
                            "cannot record {described}: {}",
                            llmsim_snapshot::error_chain(&e)
                        );
                        Recording::Failed
                    }
                }
            };
            (exchange, recording)
        } else {
            (raw.into_exchange(None), Recording::Off)
        };
        let call = CallLine::of(&exchange, &self.prices);
        if let Some(cost) = call.cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
            let mut spend = self.spend.lock().unwrap_or_else(PoisonError::into_inner);
            spend.spent_usd += cost;
            spend.largest_usd = spend.largest_usd.max(cost);
        }
        Forwarded {
            exchange,
            call,
            recording,
        }
    }
}

fn system_roots() -> Result<RootCertStore, UpstreamSetupError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let reason = if loaded.errors.is_empty() {
            "no certificates found".to_owned()
        } else {
            loaded
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(UpstreamSetupError::Roots { reason });
    }
    for error in &loaded.errors {
        tracing::warn!("skipped part of the system trust store: {error}");
    }
    Ok(roots)
}

/// Hands the real host's answer to the app as it arrives (`frames`, then `trailers`) and
/// keeps it in `answer`, each chunk stamped with its arrival since `started`; the app going
/// away does not stop the reading, so the exchange is whole. Returns why the answer is
/// incomplete, if the real host broke off.
async fn relay(
    incoming: &mut hyper::body::Incoming,
    answer: &mut RawResponse<Bytes>,
    started: Instant,
    frames: &mpsc::Sender<io::Result<Bytes>>,
    trailers: oneshot::Sender<HeaderMap>,
) -> Option<String> {
    let mut trailers = Some(trailers);
    let mut app_gone = false;
    while let Some(frame) = incoming.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                let broke_off = format!("the real host broke off the response: {e}");
                let _ = frames.send(Err(io::Error::other(e))).await;
                return Some(broke_off);
            }
        };
        match frame.into_data() {
            Ok(data) => {
                answer.body.push((ms_since(started), data.clone()));
                if !app_gone && frames.send(Ok(data)).await.is_err() {
                    app_gone = true;
                }
            }
            Err(frame) => {
                if let Ok(fields) = frame.into_trailers() {
                    answer.trailers = record::headers(&fields);
                    if let Some(to_app) = trailers.take() {
                        let _ = to_app.send(fields);
                    }
                }
            }
        }
    }
    None
}

/// The sending half of a forwarding connection, in the HTTP version the host picked.
enum SendRequest {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl SendRequest {
    fn version(&self) -> http::Version {
        match self {
            Self::Http1(_) => http::Version::HTTP_11,
            Self::Http2(_) => http::Version::HTTP_2,
        }
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Self::Http1(sender) => sender.send_request(request).await,
            Self::Http2(sender) => sender.send_request(request).await,
        }
    }
}

/// Starts HTTP on `io`: HTTP/2 when `h2`, else HTTP/1.1.
async fn handshake<T>(io: T, h2: bool, target: &str) -> Result<SendRequest, ForwardError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let failed = |source| ForwardError::Http {
        target: target.to_owned(),
        source,
    };
    let sender = if h2 {
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("forwarding connection ended: {e}");
            }
        });
        SendRequest::Http2(sender)
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("forwarding connection ended: {e}");
            }
        });
        SendRequest::Http1(sender)
    };
    Ok(sender)
}

/// The app's request as the real host gets it over HTTP `version`: hop-by-hop headers
/// dropped (but `te: trailers`, which HTTP/2 keeps), the body as received. Over HTTP/1.1
/// the `Host` is kept (or set from `to`); over HTTP/2 the request target carries the scheme
/// and authority (from `Host`, else `to`) instead.
fn outgoing_request(
    request: &ReplayRequest,
    to: &UpstreamAddr,
    version: http::Version,
) -> Result<Request<Full<Bytes>>, ForwardError> {
    let h2 = version == http::Version::HTTP_2;
    let default_port = if to.tls { 443 } else { 80 };
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || {
                if to.port == default_port {
                    to.host.clone()
                } else {
                    to.to_string()
                }
            },
            str::to_owned,
        );
    let target = if h2 {
        let scheme = if to.tls { "https" } else { "http" };
        format!("{scheme}://{host}{}", request.path)
    } else {
        request.path.clone()
    };
    let mut outgoing = Request::builder()
        .method(request.method.as_str())
        .uri(target.as_str())
        .version(version)
        .body(Full::new(request.body.clone()))
        .map_err(|source| ForwardError::Build { source })?;
    let headers = outgoing.headers_mut();
    for (name, value) in &request.headers {
        let kept = if name == header::TE {
            h2 && value == "trailers"
        } else {
            !is_hop_by_hop(name.as_str())
                && name != header::CONTENT_LENGTH
                && !(h2 && name == header::HOST)
        };
        if kept {
            headers.append(name.clone(), value.clone());
        }
    }
    if !h2 && !headers.contains_key(header::HOST) {
        let value =
            HeaderValue::try_from(host).map_err(|e| ForwardError::Build { source: e.into() })?;
        headers.insert(header::HOST, value);
    }
    Ok(outgoing)
}

/// `localhost` or a loopback address: forwarding there would reach replayd itself.
fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_take_the_original_port_then_the_host_header_then_the_scheme_default() {
        let t = UpstreamAddr::of("api.openai.com", true, None);
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("api.openai.com", 443, true)
        );
        assert_eq!(
            UpstreamAddr::of("api.openai.com", true, Some(8443)).port,
            8443
        );
        assert_eq!(UpstreamAddr::of("localhost:11434", false, None).port, 11434);
        assert_eq!(UpstreamAddr::of("localhost", false, None).port, 80);
        let v6 = UpstreamAddr::of("[::1]:8080", false, None);
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert_eq!(UpstreamAddr::of("[::1]", false, None).port, 80);
    }

    #[test]
    fn loopback_names_are_refused_as_targets() {
        for host in ["localhost", "127.0.0.1", "::1", "0.0.0.0"] {
            assert!(is_loopback_name(host), "{host}");
        }
        assert!(!is_loopback_name("api.openai.com"));
    }

    #[test]
    fn no_upstream_under_fail_and_budgets_start_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Upstream::new(dir.path(), UpstreamSettings::default())
                .unwrap()
                .is_none()
        );
        let upstream = Upstream::new(
            dir.path(),
            UpstreamSettings {
                on_miss: OnMiss::Passthrough,
                budget_usd: Some(1.0),
                roots: Roots::Custom(RootCertStore::empty()),
                ..UpstreamSettings::default()
            },
        )
        .unwrap()
        .unwrap();
        assert!(!upstream.records());
        assert_eq!(upstream.admit(), Ok(()));
        upstream.spend.lock().unwrap().spent_usd = 0.6;
        upstream.spend.lock().unwrap().largest_usd = 0.6;
        assert_eq!(
            upstream.admit(),
            Err(BudgetExhausted {
                budget_usd: 1.0,
                spent_usd: 0.6
            }),
            "a second forward like the first would exceed the budget"
        );
    }
}
