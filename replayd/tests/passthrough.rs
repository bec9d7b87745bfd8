//! In-process tests of `--on-miss passthrough|record` and `--budget`: replayd serves a
//! snapshot over TLS on loopback, and its misses go to a local HTTPS server standing in for
//! the real provider (a TLS leaf minted by a test CA that only the forwarder's roots trust,
//! reached through the test-only `connect_to` override). No root, no kernel hooks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use llmsim_replayd::body::ReplayBody;
use llmsim_replayd::ca::{CertificateAuthority, LeafResolver, crypto_provider};
use llmsim_replayd::options::{OnMiss, Pace, ReplayOptions};
use llmsim_replayd::run::{self, ListenAddr, Running, Server};
use llmsim_replayd::upstream::{Roots, UpstreamSettings};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

/// What the fake upstream saw: each request's Authorization header and JSON body.
type Seen = Mutex<Vec<(Option<String>, Value)>>;

const SECRET: &str = "sk-proj-PASSTHROUGHSECRET0123456789abcdef";

/// An HTTPS server answering chat completions like `OpenAI`, with a nonce per answer and
/// usage of a million tokens each way (75 cents for gpt-4o-mini). A streamed answer sends
/// its first event, then waits for `release` before the rest.
struct FakeUpstream {
    addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    /// Every request's Authorization header and body, in arrival order.
    seen: Arc<Seen>,
    /// Every answer body as sent.
    sent: Arc<Mutex<Vec<Bytes>>>,
    release: Arc<Notify>,
    _dir: tempfile::TempDir,
}

impl FakeUpstream {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap());
        let resolver = Arc::new(LeafResolver::new(ca.clone()).unwrap());
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(resolver.server_config(&[b"http/1.1"])));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Self {
            addr,
            ca,
            seen: Arc::default(),
            sent: Arc::default(),
            release: Arc::new(Notify::new()),
            _dir: dir,
        };
        let (seen, sent, release) = (
            upstream.seen.clone(),
            upstream.sent.clone(),
            upstream.release.clone(),
        );
        let counter = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let (seen, sent, release, counter) =
                    (seen.clone(), sent.clone(), release.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let (seen, sent, release, counter) =
                            (seen.clone(), sent.clone(), release.clone(), counter.clone());
                        async move { answer(request, &seen, &sent, &release, &counter).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        upstream
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn answer(
    request: Request<Incoming>,
    seen: &Seen,
    sent: &Arc<Mutex<Vec<Bytes>>>,
    release: &Arc<Notify>,
    counter: &AtomicU64,
) -> Result<Response<ReplayBody>, std::convert::Infallible> {
    let auth = request
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    seen.lock().unwrap().push((auth, body.clone()));
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    let nonce = format!("nonce-{n}");
    let usage = json!({"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000, "total_tokens": 2_000_000});
    if body["stream"] == json!(true) {
        let events: Vec<Bytes> = [
            json!({"id": format!("chatcmpl-{n}"), "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "delta": {"content": nonce}, "finish_reason": null}]}),
            json!({"id": format!("chatcmpl-{n}"), "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}),
        ]
        .iter()
        .map(|event| Bytes::from(format!("data: {event}\n\n")))
        .chain([Bytes::from_static(b"data: [DONE]\n\n")])
        .collect();
        sent.lock().unwrap().push(events.concat().into());
        let (tx, rx) = mpsc::channel(4);
        let release = release.clone();
        tokio::spawn(async move {
            let mut events = events.into_iter();
            tx.send(Ok(events.next().unwrap())).await.unwrap();
            release.notified().await;
            for event in events {
                let _ = tx.send(Ok(event)).await;
            }
        });
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .header("x-request-id", format!("req_{n}"))
            .body(ReplayBody::stream(rx))
            .unwrap());
    }
    let text = json!({
        "id": format!("chatcmpl-{n}"), "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": nonce}, "finish_reason": "stop"}],
        "usage": usage,
    })
    .to_string();
    let bytes = Bytes::from(text);
    sent.lock().unwrap().push(bytes.clone());
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-request-id", format!("req_{n}"))
        .header("keep-alive", "timeout=5")
        .body(ReplayBody::full(bytes))
        .unwrap())
}

/// replayd serving `dir` over TLS on loopback, forwarding misses to `upstream`.
struct Replay {
    addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    running: Running,
}

fn replay(
    dir: &std::path::Path,
    on_miss: OnMiss,
    upstream: &FakeUpstream,
    budget_usd: Option<f64>,
    trusted: bool,
) -> Replay {
    let mut roots = rustls::RootCertStore::empty();
    if trusted {
        roots.add(upstream.ca.cert_der().clone()).unwrap();
    }
    let options = ReplayOptions {
        on_miss,
        pace: Pace::Instant,
        ..ReplayOptions::default()
    };
    let settings = UpstreamSettings {
        on_miss,
        budget_usd,
        roots: Roots::Custom(roots),
        connect_to: Some(upstream.addr),
        redaction_dir: Some(dir.join("key")),
        ..UpstreamSettings::default()
    };
    let engine = Arc::new(run::load_engine_with(dir, options, settings).unwrap());
    let ca = Arc::new(CertificateAuthority::load_or_create(&dir.join("replay-ca")).unwrap());
    let resolver = Arc::new(LeafResolver::new(ca.clone()).unwrap());
    let server = Server::bind(
        engine,
        Some(resolver),
        &[ListenAddr::required("127.0.0.1:0".parse().unwrap())],
    )
    .unwrap();
    Replay {
        addr: server.local_addrs()[0],
        ca,
        running: server.start(None),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An app's TLS connection to replayd for api.openai.com.
async fn connect(replay: &Replay) -> Sender {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(replay.ca.cert_der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = TcpStream::connect(replay.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn chat(prompt: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model": "gpt-4o-mini", "stream": stream,
                      "messages": [{"role": "user", "content": prompt}]});
    Request::post("/v1/chat/completions")
        .header("host", "api.openai.com")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {SECRET}"))
        .header("connection", "keep-alive")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn ask(
    client: &mut Sender,
    request: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    client.ready().await.unwrap();
    let response = client.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn exchange_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("exchanges"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test]
async fn passthrough_answers_byte_equal_to_the_upstream_and_streams_as_it_arrives() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let replay = replay(dir.path(), OnMiss::Passthrough, &upstream, None, true);
    let mut client = connect(&replay).await;

    let (status, headers, body) = ask(&mut client, chat("plain", false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, upstream.sent.lock().unwrap()[0]);
    assert_eq!(headers["x-request-id"], "req_1");
    assert!(
        headers.get("keep-alive").is_none(),
        "hop-by-hop headers are dropped"
    );
    let (auth, _) = upstream.seen.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some(format!("Bearer {SECRET}").as_str()));

    // The first event reaches the app while the upstream still holds the rest back.
    client.ready().await.unwrap();
    let response = client.send_request(chat("streamed", true)).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event arrives before the stream ends")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("nonce-2"));
    upstream.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!([first, rest].concat(), upstream.sent.lock().unwrap()[1]);

    let report = replay.running.report();
    assert_eq!((report.forwarded, report.recorded), (2, 0));
    assert_eq!(report.misses.len(), 0);
    assert!(!report.failed(), "{report}");
    assert!(
        (report.live.cost_usd - 1.5).abs() < 1e-9,
        "two calls of 1M+1M gpt-4o-mini tokens: {report}"
    );
    assert!(
        exchange_files(dir.path()).is_empty(),
        "passthrough records nothing"
    );
}

#[tokio::test]
async fn record_appends_a_redacted_exchange_that_serves_the_next_identical_request() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let replay = replay(dir.path(), OnMiss::Record, &upstream, None, true);
    let mut client = connect(&replay).await;

    let (status, _, live) = ask(&mut client, chat("record me", false)).await;
    assert_eq!(status, StatusCode::OK);
    client.ready().await.unwrap();
    let response = client.send_request(chat("stream me", true)).await.unwrap();
    upstream.release.notify_one();
    let live_stream = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(upstream.requests(), 2);

    let files = exchange_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            !text.contains("PASSTHROUGHSECRET"),
            "the key leaked into {}",
            file.display()
        );
        assert!(text.contains("<redacted:"), "{text}");
        let stored: Value = serde_json::from_str(&text).unwrap();
        assert!(stored["summary"]["usage"].is_object(), "{text}");
    }
    let streamed: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[1]).unwrap()).unwrap();
    assert_eq!(streamed["response"]["body"]["kind"], "sse");
    assert_eq!(
        streamed["response"]["body"]["events"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The same requests again: answered from the new recordings, not the upstream.
    let (status, _, replayed) = ask(&mut client, chat("record me", false)).await;
    assert_eq!(status, StatusCode::OK);
    let replayed: Value = serde_json::from_slice(&replayed).unwrap();
    assert_eq!(replayed, serde_json::from_slice::<Value>(&live).unwrap());
    let (_, _, replayed_stream) = ask(&mut client, chat("stream me", true)).await;
    assert_eq!(replayed_stream, live_stream);
    assert_eq!(upstream.requests(), 2, "served from the recording");

    let report = replay.running.report();
    assert_eq!(
        (report.forwarded, report.recorded, report.total_served),
        (2, 2, 2)
    );
    assert!(!report.failed(), "{report}");
    let text = report.to_string();
    assert!(
        text.contains("passed through 2 requests to the real API (2 recorded)"),
        "{text}"
    );

    // And a later run serves them with the default policy, offline.
    drop(replay);
    let later = run::load_engine(dir.path(), ReplayOptions::default()).unwrap();
    assert_eq!(later.len(), 2);
}

#[tokio::test]
async fn the_budget_refuses_forwards_once_spent() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // One call costs $0.75: the first goes through, the second would exceed $1.
    let replay = replay(dir.path(), OnMiss::Passthrough, &upstream, Some(1.0), true);
    let mut client = connect(&replay).await;
    let (status, _, _) = ask(&mut client, chat("one", false)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = ask(&mut client, chat("two", false)).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers["x-llmsim-error"], "budget");
    let body: Value = serde_json::from_slice(&body).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("budget of $1.0000 is exhausted"),
        "{message}"
    );
    assert_eq!(upstream.requests(), 1);

    let report = replay.running.report();
    assert_eq!((report.forwarded, report.budget_refused), (1, 1));
    assert!(report.failed());
    let text = report.to_string();
    assert!(
        text.contains("budget of $1.0000 exhausted after 1 forwards"),
        "{text}"
    );
    assert!(text.contains("refused 1 requests"), "{text}");
}

#[tokio::test]
async fn an_upstream_that_fails_verification_gets_a_counted_502() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let replay = replay(dir.path(), OnMiss::Record, &upstream, None, false);
    let mut client = connect(&replay).await;
    let (status, headers, body) = ask(&mut client, chat("untrusted", false)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-llmsim-error"], "forward");
    let body: Value = serde_json::from_slice(&body).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("TLS handshake with api.openai.com:443 failed"),
        "{message}"
    );
    assert_eq!(upstream.requests(), 0);
    let report = replay.running.report();
    assert_eq!(report.forward_errors, 1);
    assert!(report.failed());
    assert_eq!(exchange_files(dir.path()).len(), 0);
}
