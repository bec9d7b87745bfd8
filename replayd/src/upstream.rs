//! Misses that go to the real host: `--on-miss passthrough` forwards a request with no
//! recording to the host the app asked for and streams the answer back as it arrives
//! (server-sent events included); `--on-miss record` does the same and appends the new
//! exchange to the snapshot, redacted as capture redacts (the snapshot's `[redact]` rules
//! and the per-machine key), with its usage summary, through the [`SnapshotWriter`] that
//! assigns seq and never overwrites. The engine then serves it to later identical requests
//! of the same run. `--budget USD` prices every forwarded exchange and refuses forwards
//! once the live spend would exceed the budget.
//!
//! replayd's own process is exempt from the cgroup redirect, so its connects and DNS go out
//! normally; certificates are verified against the system roots (`SSL_CERT_FILE` honoured).
//! One connection per forward: misses are rare, and a connection per forward keeps a
//! broken upstream from poisoning the next one.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use llmsim_snapshot::atomic::Owner;
use llmsim_snapshot::config::{ConfigError, SnapshotConfig};
use llmsim_snapshot::ledger::CallLine;
use llmsim_snapshot::model::{
    Body, Exchange, FORMAT_VERSION, Headers, ProcessInfo, Request as StoredRequest,
    Response as StoredResponse, Scheme,
};
use llmsim_snapshot::prices::{PriceError, PriceTable};
use llmsim_snapshot::provider::{self, Endpoint, Provider};
use llmsim_snapshot::redact::{RedactError, Redactor, default_data_dir, redaction_key};
use llmsim_snapshot::store::{SnapshotWriter, StoreError};
use llmsim_snapshot::usage;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::body::ReplayBody;
use crate::engine::{Engine, ReplayRequest, endpoint_label, host_without_port};
use crate::options::OnMiss;
use crate::report::Event;
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
    Config(#[from] ConfigError),
    /// The redactor or the per-machine key could not be set up.
    #[error("cannot set up redaction for --on-miss record")]
    Redact(#[from] RedactError),
    /// The snapshot directory cannot be appended to.
    #[error("cannot open the snapshot for --on-miss record")]
    Writer(#[from] StoreError),
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

/// Where a miss goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host the app asked for, without a port.
    pub host: String,
    /// The port to connect to.
    pub port: u16,
    /// Whether to speak TLS.
    pub tls: bool,
}

impl Target {
    fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Appends forwarded exchanges to the snapshot.
#[derive(Debug)]
struct Recorder {
    writer: SnapshotWriter,
    redactor: Redactor,
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
    recorder: Option<Mutex<Recorder>>,
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
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let recorder = if settings.on_miss == OnMiss::Record {
            let config = SnapshotConfig::load(dir)?;
            let key_dir = match settings.redaction_dir {
                Some(dir) => dir,
                None => default_data_dir()?,
            };
            let redactor = Redactor::new(&config.redact, redaction_key(&key_dir)?)?;
            Some(Mutex::new(Recorder {
                writer: SnapshotWriter::open_as(dir, Owner::invoking_user())?,
                redactor,
            }))
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

    /// Forwards `request` to `target` and answers with the real host's status and headers
    /// (hop-by-hop ones dropped) and a body streamed as it arrives. When the body ends, the
    /// exchange is priced, counted and (under record) written and made servable.
    pub async fn forward(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        target: Target,
        request: ReplayRequest,
    ) -> Result<Response<ReplayBody>, ForwardError> {
        if target.host.is_empty() {
            return Err(ForwardError::NoHost);
        }
        if self.connect_to.is_none() && is_loopback_name(&target.host) {
            return Err(ForwardError::Loopback { host: target.host });
        }
        let described = target.describe();
        let (mut sender, peer) = self.open(&target, &described).await?;
        let outgoing = outgoing_request(&request, &target)?;
        let started_at = OffsetDateTime::now_utc();
        let started = Instant::now();
        let response =
            sender
                .send_request(outgoing)
                .await
                .map_err(|source| ForwardError::Http {
                    target: described.clone(),
                    source,
                })?;
        let ttfb_ms = ms_since(started);
        let (parts, mut incoming) = response.into_parts();
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        let stored_head = StoredHead {
            target,
            peer,
            started_at,
            ttfb_ms,
            status: parts.status.as_u16(),
            headers: stored_headers(&parts.headers),
        };
        let (frames, receiver) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            let _sender = sender;
            let mut segments: Vec<(f64, Bytes)> = Vec::new();
            let mut broke_off = None;
            let mut app_gone = false;
            while let Some(frame) = incoming.frame().await {
                match frame {
                    Ok(frame) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        segments.push((ms_since(started), data.clone()));
                        if !app_gone && frames.send(Ok(data)).await.is_err() {
                            // The app went away; read on so the exchange is whole.
                            app_gone = true;
                        }
                    }
                    Err(e) => {
                        broke_off = Some(format!("the real host broke off the response: {e}"));
                        let _ = frames.send(Err(io::Error::other(e))).await;
                        break;
                    }
                }
            }
            let duration_ms = ms_since(started);
            this.finish(
                &engine,
                stored_head,
                &request,
                &segments,
                duration_ms,
                broke_off,
            );
            // Only now does the app's body end: once it has its answer, the exchange is
            // counted and, under record, servable to the next identical request.
            drop(frames);
        });
        let mut response = Response::new(ReplayBody::stream(receiver));
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// A connection to `target` (TLS verified against the roots), ready for one request,
    /// and the address it reached.
    async fn open(
        &self,
        target: &Target,
        described: &str,
    ) -> Result<(SendRequest, Option<SocketAddr>), ForwardError> {
        let connect = match self.connect_to {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((target.host.as_str(), target.port)).await,
        };
        let stream = connect.map_err(|source| ForwardError::Connect {
            target: described.to_owned(),
            source,
        })?;
        // Small writes (a request, then nothing) must not wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        let sender = if target.tls {
            let name = ServerName::try_from(target.host.clone()).map_err(|source| {
                ForwardError::ServerName {
                    host: target.host.clone(),
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
            handshake(TokioIo::new(tls), described).await?
        } else {
            handshake(TokioIo::new(stream), described).await?
        };
        Ok((sender, peer))
    }

    /// Prices, counts and (under record) stores one forwarded exchange.
    fn finish(
        &self,
        engine: &Engine,
        head: StoredHead,
        request: &ReplayRequest,
        segments: &[(f64, Bytes)],
        duration_ms: f64,
        incomplete: Option<String>,
    ) {
        let mut exchange = head.exchange(request, segments, duration_ms, incomplete);
        let call = if let Some(recorder) = &self.recorder {
            let mut recorder = recorder.lock().unwrap_or_else(PoisonError::into_inner);
            recorder.redactor.redact_exchange(&mut exchange);
            exchange.summary = usage::summarize(&exchange);
            let call = CallLine::of(&exchange, &self.prices);
            if exchange.incomplete.is_none() {
                match recorder.writer.write(&exchange) {
                    Ok(path) => {
                        tracing::info!(file = %path.display(), "recorded a new exchange");
                        engine.add_recorded(&exchange, &path);
                    }
                    Err(e) => {
                        tracing::error!(
                            "cannot record {}: {}",
                            request.describe(),
                            llmsim_snapshot::error_chain(&e)
                        );
                        engine.stats().record(Event::InternalError);
                    }
                }
            } else {
                tracing::warn!(
                    "not recording {}: the exchange is incomplete",
                    request.describe()
                );
            }
            call
        } else {
            exchange.summary = usage::summarize(&exchange);
            CallLine::of(&exchange, &self.prices)
        };
        if let Some(cost) = call.cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
            let mut spend = self.spend.lock().unwrap_or_else(PoisonError::into_inner);
            spend.spent_usd += cost;
            spend.largest_usd = spend.largest_usd.max(cost);
        }
        engine.stats().record(Event::Forwarded {
            provider: exchange.provider,
            endpoint: endpoint_label(&exchange.request.method, &exchange.request.path),
            recorded: self.recorder.is_some() && exchange.incomplete.is_none(),
            call: Box::new(call),
        });
    }
}

/// What is known of a forwarded exchange once its head arrived.
struct StoredHead {
    target: Target,
    peer: Option<SocketAddr>,
    started_at: OffsetDateTime,
    ttfb_ms: f64,
    status: u16,
    headers: Headers,
}

impl StoredHead {
    /// The exchange as capture would have stored it (before redaction).
    fn exchange(
        self,
        request: &ReplayRequest,
        segments: &[(f64, Bytes)],
        duration_ms: f64,
        mut incomplete: Option<String>,
    ) -> Exchange {
        let request_headers = stored_headers(&request.headers);
        let request_body = decode_body(
            &request_headers,
            &[(0.0, request.body.clone())],
            &mut incomplete,
        );
        let response_body = decode_body(&self.headers, segments, &mut incomplete);
        let provider = Provider::from_host(&self.target.host);
        let endpoint = Endpoint::classify(&request.method, &request.path);
        let json = request_body.json();
        let model = provider::model_of(endpoint, &request.path, json);
        let streamed =
            response_body.sse_events().is_some() || provider::is_streaming(endpoint, json);
        Exchange {
            format_version: FORMAT_VERSION,
            seq: 0,
            provider,
            host: self.target.host.to_ascii_lowercase(),
            scheme: if self.target.tls {
                Scheme::Https
            } else {
                Scheme::Http
            },
            // The app's process is not known to the listener; replayd made the request.
            process: ProcessInfo {
                pid: std::process::id(),
                comm: "replayd".to_owned(),
                exe: None,
            },
            peer: self.peer,
            started_at: self.started_at,
            ttfb_ms: self.ttfb_ms,
            duration_ms,
            incomplete,
            streamed,
            model,
            summary: None,
            request: StoredRequest {
                method: request.method.clone(),
                path: request.path.clone(),
                headers: request_headers,
                body: request_body,
            },
            response: StoredResponse {
                status: self.status,
                headers: self.headers,
                body: response_body,
            },
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

/// The sending half of a forwarding connection.
type SendRequest = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn handshake<T>(io: T, target: &str) -> Result<SendRequest, ForwardError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|source| ForwardError::Http {
                target: target.to_owned(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("forwarding connection ended: {e}");
        }
    });
    Ok(sender)
}

/// The app's request as the real host gets it: hop-by-hop headers dropped, `Host` kept
/// (or set from the target), the body as received.
fn outgoing_request(
    request: &ReplayRequest,
    target: &Target,
) -> Result<Request<Full<Bytes>>, ForwardError> {
    let mut outgoing = Request::builder()
        .method(request.method.as_str())
        .uri(request.path.as_str())
        .body(Full::new(request.body.clone()))
        .map_err(|source| ForwardError::Build { source })?;
    let headers = outgoing.headers_mut();
    for (name, value) in &request.headers {
        if !is_hop_by_hop(name.as_str()) && name != header::CONTENT_LENGTH {
            headers.append(name.clone(), value.clone());
        }
    }
    if !headers.contains_key(header::HOST) {
        let default_port = if target.tls { 443 } else { 80 };
        let host = if target.port == default_port {
            target.host.clone()
        } else {
            target.describe()
        };
        let value =
            HeaderValue::try_from(host).map_err(|e| ForwardError::Build { source: e.into() })?;
        headers.insert(header::HOST, value);
    }
    Ok(outgoing)
}

fn stored_headers(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Decodes a body for storage as capture does; one that cannot be decoded is kept as its
/// bytes and the exchange says why.
fn decode_body(
    headers: &Headers,
    segments: &[(f64, Bytes)],
    incomplete: &mut Option<String>,
) -> Body {
    let (body, error) = Body::for_storage(
        headers.get("content-type"),
        headers.get("content-encoding"),
        segments,
    );
    if let Some(error) = error {
        incomplete.get_or_insert_with(|| format!("body could not be decoded: {error}"));
    }
    body
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

/// The target for a miss on a connection: the app's host, on the original destination's
/// port when the redirect knows it, else the `Host` header's port, else 443 for TLS and 80
/// for plain HTTP.
pub fn target_of(host: &str, tls: bool, original_port: Option<u16>) -> Target {
    let trimmed = host.trim();
    let name = host_without_port(trimmed).to_owned();
    let header_port = if name.len() < trimmed.len() {
        trimmed
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
    } else {
        None
    };
    let port = original_port
        .or(header_port)
        .unwrap_or(if tls { 443 } else { 80 });
    Target {
        host: name,
        port,
        tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_the_original_port_then_the_host_header_then_the_scheme_default() {
        let t = target_of("api.openai.com", true, None);
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("api.openai.com", 443, true)
        );
        assert_eq!(target_of("api.openai.com", true, Some(8443)).port, 8443);
        assert_eq!(target_of("localhost:11434", false, None).port, 11434);
        assert_eq!(target_of("localhost", false, None).port, 80);
        let v6 = target_of("[::1]:8080", false, None);
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert_eq!(target_of("[::1]", false, None).port, 80);
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
