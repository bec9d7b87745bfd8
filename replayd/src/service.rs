//! The HTTP service: one [`ReplayService`] per connection, built by [`app`], turns each
//! request into an engine lookup and answers with the recorded status, headers and body
//! (server-sent events paced as the run says) or with the error response of
//! [`crate::error`]. A miss under `--on-miss passthrough|record` goes to the real host
//! through [`Engine::forward`], and its answer streams back as it arrives. What happens to
//! each request is counted by the engine; the service reports the failures only it sees. It
//! is a plain `hyper` service over any request body, so tests drive it over a loopback
//! listener or call it directly; the acceptor adds TLS and the kernel's original destination
//! through [`ConnInfo`]. HTTP/1.1 and HTTP/2 requests are served alike, whichever version
//! the exchange was recorded over: an HTTP/2 request names its host in `:authority`, and
//! recorded trailers are announced in a `Trailer` header to HTTP/1.1 clients, which get
//! them only when announced.
//!
//! Before the lookup the engine may refuse a request (a simulated rate limit, an injected
//! error status) or have its connection closed (an injected reset, the service's only
//! error); a stream fault or `--pace model` changes how a served recording goes out.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, Version, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use llmsim_snapshot::provider::{ApiFamily, Endpoint, Provider};

use crate::body::{Ending, ReplayBody};
use crate::deadline::Deadline;
use crate::engine::{Admission, Engine, Miss, NotForwarded, Outcome, RecordedEntry};
use crate::error::{DownstreamError, ErrorShape, ServeError, error_response};
use crate::faults::{FaultError, StreamFault};
use crate::h2_writes::H2_FRAME;
use crate::metrics::ModelLabels;
use crate::options::Pace;
use crate::request::ReplayRequest;
use crate::response::{PreparedBody, PreparedResponse, TimedChunk};
use crate::upstream::UpstreamAddr;

/// What the acceptor knows about a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The address the client connected to before the kernel redirected it, if known.
    pub original_destination: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The TLS server name the client sent.
    pub sni: Option<String>,
}

/// The service answering one connection's requests from the engine. hyper clones it for
/// every request (the request's future owns it), which adds to a reference count of the
/// connection's own: adding to the engine's, shared by every connection of every serving
/// thread, moved that count between cores at every request.
#[derive(Clone, Debug)]
pub struct ReplayService(Arc<Answering>);

/// What a [`ReplayService`] answers with.
#[derive(Debug)]
pub struct Answering {
    engine: Arc<Engine>,
    conn: ConnInfo,
}

impl std::ops::Deref for ReplayService {
    type Target = Answering;

    fn deref(&self) -> &Answering {
        &self.0
    }
}

/// The replay service for one connection.
pub fn app(engine: Arc<Engine>, conn: ConnInfo) -> ReplayService {
    ReplayService(Arc::new(Answering { engine, conn }))
}

type BoxedBodyError = Box<dyn std::error::Error + Send + Sync>;

impl<B> hyper::service::Service<Request<B>> for ReplayService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxedBodyError>,
{
    type Response = Response<ReplayBody>;
    type Error = FaultError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ReplayBody>, FaultError>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        let h2 = request.version() == Version::HTTP_2;
        Box::pin(async move {
            let response = this.answer(request).await?;
            Ok(if h2 {
                response.map(|body| body.in_frames_of_at_most(H2_FRAME))
            } else {
                response
            })
        })
    }
}

impl ReplayService {
    /// Answers one request; an injected reset fault answers with an empty 502 here, since
    /// only the connection can close without an answer ([`Self::answer`]).
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ReplayBody>
    where
        B: http_body::Body + Send,
        B::Error: Into<BoxedBodyError>,
    {
        self.answer(request).await.unwrap_or_else(|_| {
            let mut response = Response::new(ReplayBody::empty());
            *response.status_mut() = http::StatusCode::BAD_GATEWAY;
            response
        })
    }

    /// Answers one request, or says that the connection is to be closed without one.
    pub async fn answer<B>(&self, request: Request<B>) -> Result<Response<ReplayBody>, FaultError>
    where
        B: http_body::Body + Send,
        B::Error: Into<BoxedBodyError>,
    {
        let arrived = Instant::now();
        let (parts, body) = request.into_parts();
        let version = parts.version;
        let host = self.host_of(&parts);
        let method = parts.method.as_str().to_owned();
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let body = match read_body(body, self.engine.options().body_limit()).await {
            Ok(body) => body,
            Err(e) => {
                self.engine.count_bad_request();
                let error = ServeError::from(e);
                tracing::info!(peer = ?self.conn.peer, "refused a request: {}", error.message());
                let shape = ErrorShape::of(
                    Provider::from_host(&host),
                    Endpoint::classify(&method, &path),
                );
                return Ok(error_response(&error, shape));
            }
        };
        let request = ReplayRequest {
            method,
            host,
            path,
            headers: parts.headers,
            body,
        };
        let facts = self.engine.facts(&request);
        let fault = match self.engine.admit(facts.as_ref()) {
            Admission::Serve(fault) => fault,
            Admission::Refuse(response) => return Ok(*response),
            Admission::Reset => return Err(FaultError::Reset),
        };
        Ok(match self.engine.respond_for(&request, facts.as_ref()) {
            Outcome::Hit(hit) => {
                let entry = &hit.entry;
                let shape = ErrorShape::of(
                    entry.provider,
                    Endpoint::classify(&request.method, &request.path),
                );
                let result = match &entry.response {
                    Ok(prepared) => {
                        let fault = fault.filter(|f| applies(*f, &prepared.body));
                        if let Some(fault) = fault {
                            self.engine.count_fault(fault.kind(), false, facts.as_ref());
                        }
                        self.send(entry, prepared, version, arrived, fault).await
                    }
                    Err(source) => Err(ServeError::Snapshot {
                        file: entry.file.clone(),
                        source: source.clone(),
                    }),
                };
                result.unwrap_or_else(|error| {
                    if matches!(error, ServeError::Internal { .. }) {
                        self.engine.count_internal_error();
                    }
                    tracing::error!("{}", error.message());
                    error_response(&error, shape)
                })
            }
            // Boxed: forwarding's state is many times that of the rest, and it would otherwise
            // be allocated and moved with every request's future.
            Outcome::Miss(miss) if self.engine.forwards() => {
                Box::pin(self.forward(request, &miss)).await
            }
            Outcome::Miss(miss) => {
                let shape = ErrorShape::of(miss.provider, miss.endpoint);
                let error = ServeError::NoRecording(miss);
                tracing::warn!("{}", error.message());
                error_response(&error, shape)
            }
        })
    }

    /// Forwards a miss to the real host (`--on-miss passthrough|record`), unless the budget
    /// is used up; a failure becomes a provider-shaped error.
    async fn forward(&self, request: ReplayRequest, miss: &Miss) -> Response<ReplayBody> {
        let shape = ErrorShape::of(miss.provider, miss.endpoint);
        let to = UpstreamAddr::of(
            &request.host,
            self.conn.tls,
            self.conn.original_destination.map(|d| d.port()),
        );
        let described = request.describe();
        let error = match self.engine.forward(request, to).await {
            Ok(response) => return response,
            Err(NotForwarded::Off) => ServeError::NoRecording(Box::new(miss.clone())),
            Err(NotForwarded::Budget(exhausted)) => {
                let error = ServeError::from(exhausted);
                tracing::warn!("{}: {}", miss.request, error.message());
                error
            }
            Err(NotForwarded::Failed(source)) => {
                let error = ServeError::Forward {
                    request: described,
                    source,
                };
                tracing::error!("{}", error.message());
                error
            }
        };
        error_response(&error, shape)
    }

    /// The host to match: the TLS server name, else the `Host` header (or an absolute
    /// request target's authority), else the original destination's address.
    fn host_of(&self, parts: &Parts) -> String {
        if let Some(sni) = &self.conn.sni {
            return sni.clone();
        }
        if let Some(host) = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
        {
            return host.to_owned();
        }
        if let Some(authority) = parts.uri.authority() {
            return authority.host().to_owned();
        }
        self.conn
            .original_destination
            .map(|d| d.ip().to_string())
            .unwrap_or_default()
    }

    /// The recorded response of `entry` to a request over HTTP `version`, its events paced
    /// from the request's arrival (as `--pace model` draws them, if so), changed by `fault`.
    async fn send(
        &self,
        entry: &RecordedEntry,
        prepared: &PreparedResponse,
        version: Version,
        arrived: Instant,
        fault: Option<StreamFault>,
    ) -> Result<Response<ReplayBody>, ServeError> {
        let mut pace = self.engine.options().pace;
        let mut base = arrived;
        if let Some(schedule) = self.engine.schedule(entry) {
            pace = Pace::Factor(schedule.factor);
            let shift = Duration::from_secs_f64((schedule.shift_ms.abs() / 1e3).min(86_400.0));
            base = if schedule.shift_ms < 0.0 {
                arrived.checked_sub(shift).unwrap_or(arrived)
            } else {
                arrived + shift
            };
        }
        if let Some(StreamFault::SlowFirstToken(delay)) = fault {
            base += delay;
        }
        let internal =
            |source: Box<dyn std::error::Error + Send + Sync>| ServeError::Internal { source };
        let mut deadline = Deadline::default();
        let family = ApiFamily::of(entry.provider, entry.call.endpoint);
        let (body, stream) = match &prepared.body {
            PreparedBody::Full(bytes) => match fault {
                // The head, then the cut or the stall, as for a stream with no events.
                Some(StreamFault::Stall | StreamFault::Cut { .. }) => {
                    let (chunks, ending) = faulty_chunks(&Arc::from([]), fault, family);
                    (
                        ReplayBody::paced(chunks, base, pace, deadline).ending(ending),
                        false,
                    )
                }
                Some(StreamFault::SlowFirstToken(_)) => {
                    deadline.until(base).await.map_err(|e| internal(e.into()))?;
                    (ReplayBody::full(bytes.clone()), false)
                }
                Some(StreamFault::Error { .. }) | None => (ReplayBody::full(bytes.clone()), false),
            },
            PreparedBody::Events { head_ms, chunks } => {
                if let Some(delay) = pace.delay(*head_ms) {
                    deadline
                        .until(base + delay)
                        .await
                        .map_err(|e| internal(e.into()))?;
                }
                let (chunks, ending) = faulty_chunks(chunks, fault, family);
                (
                    ReplayBody::paced(chunks, base, pace, deadline).ending(ending),
                    true,
                )
            }
        };
        let observation = self.engine.stats().metrics().map(|metrics| {
            metrics.observe(
                ModelLabels::new(entry.provider, entry.call.model.as_deref()),
                arrived,
                stream,
            )
        });
        let body = body
            .with_trailers(prepared.trailers.clone())
            .observed(observation)
            .timed(self.engine.stats().serve_clock(arrived));
        let mut response = Response::builder()
            .status(prepared.status)
            .body(body)
            .map_err(|e| internal(e.into()))?;
        *response.headers_mut() = prepared.headers.clone();
        if version < Version::HTTP_2
            && let Some(names) = prepared.trailer_announcement()
        {
            response.headers_mut().insert(header::TRAILER, names);
        }
        Ok(response)
    }
}

/// Whether a stream fault changes an answer with `body`: an in-stream error needs a
/// stream to go into.
fn applies(fault: StreamFault, body: &PreparedBody) -> bool {
    !matches!(
        (fault, body),
        (StreamFault::Error { .. }, PreparedBody::Full(_))
    )
}

/// The chunks a stream fault leaves to send, and how the body then ends: a cut after N
/// events, nothing before a stall, N events and the provider's error event.
fn faulty_chunks(
    chunks: &Arc<[TimedChunk]>,
    fault: Option<StreamFault>,
    family: ApiFamily,
) -> (Arc<[TimedChunk]>, Ending) {
    match fault {
        None | Some(StreamFault::SlowFirstToken(_)) => (chunks.clone(), Ending::Whole),
        Some(StreamFault::Stall) => (Arc::new([]), Ending::Stall),
        Some(StreamFault::Cut { after_events }) => (
            chunks.iter().take(after_events).cloned().collect(),
            Ending::Cut,
        ),
        Some(StreamFault::Error { after_events }) => {
            let kept = after_events.min(chunks.len());
            let offset_ms = chunks
                .get(kept)
                .or(chunks.last())
                .map_or(0.0, |c| c.offset_ms);
            let error = TimedChunk {
                offset_ms,
                bytes: family.stream_error_event().into(),
            };
            (
                chunks[..kept].iter().cloned().chain([error]).collect(),
                Ending::Whole,
            )
        }
    }
}

async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, DownstreamError>
where
    B: http_body::Body,
    B::Error: Into<BoxedBodyError>,
{
    // Most requests with no body (GET) say so up front: nothing to poll or collect.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(DownstreamError::BodyTooLarge { limit }),
        Err(source) => Err(DownstreamError::BodyRead { source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::Full;
    use serde_json::json;

    use crate::options::ReplayOptions;
    use crate::testutil::{chat, exchange, snapshot};

    fn service(options: ReplayOptions) -> ReplayService {
        let dir = snapshot(&[exchange("hi", json!({"answer": "hello"}))]);
        let engine = Engine::load(dir.path(), options).unwrap();
        app(Arc::new(engine), ConnInfo::default())
    }

    fn post(host: &str, body: &str) -> Request<Full<Bytes>> {
        Request::post("/v1/chat/completions")
            .header("host", host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    async fn body_of(response: Response<ReplayBody>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_hit_is_the_recorded_answer() {
        let service = service(ReplayOptions::default());
        let response = service
            .handle(post("api.openai.com", &chat("hi").to_string()))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(body_of(response).await, r#"{"answer":"hello"}"#);
    }

    #[tokio::test]
    async fn the_host_comes_from_sni_then_the_host_header() {
        let sni = app(
            service(ReplayOptions::default()).engine.clone(),
            ConnInfo {
                sni: Some("api.openai.com".into()),
                tls: true,
                ..ConnInfo::default()
            },
        );
        let response = sni
            .handle(post("127.0.0.1:9", &chat("hi").to_string()))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let plain = service(ReplayOptions::default());
        let response = plain
            .handle(post("127.0.0.1:9", &chat("hi").to_string()))
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn oversized_bodies_get_413() {
        let service = service(ReplayOptions {
            max_request_body: 8,
            ..ReplayOptions::default()
        });
        let response = service
            .handle(post("api.openai.com", &chat("hi").to_string()))
            .await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(service.engine.stats().report().bad_requests, 1);
    }
}
