//! In-process tests of replayd over HTTP/2, with hyper's HTTP/2 client: `h2` by ALPN on
//! TLS and prior-knowledge h2c on plain connections, exchanges recorded over HTTP/1.1 served
//! over HTTP/2 and the other way round, trailers, paced events one DATA frame each, many
//! concurrent streams on one connection, GOAWAY at shutdown, and misses forwarded over
//! HTTP/2 to an upstream that offers it. No root, no kernel hooks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use llmsim_replayd::body::ReplayBody;
use llmsim_replayd::ca::{CertificateAuthority, LeafResolver, crypto_provider};
use llmsim_replayd::options::{OnMiss, ReplayOptions};
use llmsim_replayd::run::{self, ListenAddr, Running, Server};
use llmsim_replayd::upstream::{Roots, UpstreamSettings};
use llmsim_snapshot::model::{Body, Exchange};
use llmsim_tests::snapshot;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

const OPENAI: &str = "api.openai.com";
const GRPC_HOST: &str = "grpc.example.test";

fn chat(prompt: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
}

/// A chat completion recorded from api.openai.com over HTTP/1.1, with the connection's own
/// headers and a stale length, as a capture stores them.
fn chat_exchange(prompt: &str, answer: &Value) -> Exchange {
    snapshot::exchange(json!({
        "provider": "openai", "host": OPENAI, "scheme": "https",
        "request": {"method": "POST", "path": "/v1/chat/completions",
                    "headers": [["content-type", "application/json"]],
                    "body": {"kind": "json", "json": chat(prompt, false)}},
        "response": {"status": 200,
                     "headers": [["Content-Type", "application/json"], ["x-request-id", "req_1"],
                                 ["Connection", "keep-alive"], ["Keep-Alive", "timeout=5"],
                                 ["Transfer-Encoding", "chunked"], ["Content-Length", "9999"]],
                     "body": {"kind": "json", "json": answer}}
    }))
}

/// A streamed chat completion whose events were recorded at `offsets` ms.
fn sse_exchange(offsets: &[f64]) -> Exchange {
    let events: Vec<Value> = offsets
        .iter()
        .enumerate()
        .map(|(i, offset)| json!({"offset_ms": offset, "data": format!("{{\"n\":{i}}}")}))
        .collect();
    snapshot::exchange(json!({
        "provider": "openai", "host": OPENAI, "scheme": "https", "streamed": true,
        "ttfb_ms": offsets[0], "duration_ms": offsets[offsets.len() - 1],
        "request": {"method": "POST", "path": "/v1/chat/completions",
                    "headers": [["content-type", "application/json"]],
                    "body": {"kind": "json", "json": chat("stream please", true)}},
        "response": {"status": 200,
                     "headers": [["content-type", "text/event-stream"], ["transfer-encoding", "chunked"]],
                     "body": {"kind": "sse", "events": events}}
    }))
}

/// A gRPC-framed message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// A unary gRPC call recorded over HTTP/2, its status in the trailers.
fn grpc_exchange() -> Exchange {
    let mut exchange = snapshot::exchange(json!({
        "provider": "generic", "host": GRPC_HOST, "scheme": "https", "http_version": "2",
        "request": {"method": "POST", "path": "/llmsim.test.Echo/Say",
                    "headers": [["content-type", "application/grpc"], ["te", "trailers"]],
                    "body": {"kind": "empty"}},
        "response": {"status": 200,
                     "headers": [["content-type", "application/grpc"]],
                     "body": {"kind": "empty"},
                     "trailers": [["grpc-status", "0"], ["grpc-message", "done"]]}
    }));
    exchange.request.body = Body::Base64 {
        content_encoding: None,
        base64: grpc_frame(b"ping"),
    };
    exchange.response.body = Body::Base64 {
        content_encoding: None,
        base64: grpc_frame(b"pong"),
    };
    exchange
}

/// A served snapshot over TLS and plain HTTP on one loopback port.
struct Replay {
    addr: SocketAddr,
    running: Running,
    ca: Arc<CertificateAuthority>,
    dir: tempfile::TempDir,
}

fn serve(exchanges: &[Exchange], options: ReplayOptions) -> Replay {
    serve_with(exchanges, options, UpstreamSettings::default())
}

fn serve_with(
    exchanges: &[Exchange],
    options: ReplayOptions,
    upstream: UpstreamSettings,
) -> Replay {
    let dir = tempfile::tempdir().unwrap();
    snapshot::write(dir.path(), exchanges.iter().cloned());
    let engine = Arc::new(run::load_engine_with(dir.path(), options, upstream).unwrap());
    let ca = Arc::new(CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap());
    let resolver = Arc::new(LeafResolver::new(ca.clone()).unwrap());
    let server = Server::bind(
        engine,
        Some(resolver),
        &[ListenAddr::required("127.0.0.1:0".parse().unwrap())],
    )
    .unwrap();
    Replay {
        addr: server.local_addrs()[0],
        running: server.start(None),
        ca,
        dir,
    }
}

/// A client connection in either version.
enum Client {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        match self {
            Self::Http1(sender) => {
                sender.ready().await.unwrap();
                sender.send_request(request).await.unwrap()
            }
            Self::Http2(sender) => {
                sender.ready().await.unwrap();
                sender.send_request(request).await.unwrap()
            }
        }
    }
}

/// Starts HTTP over `io`; the connection task's result comes back on the handle.
async fn handshake<T>(io: T, h2: bool) -> (Client, tokio::task::JoinHandle<Result<(), String>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        let task = tokio::spawn(async move { conn.await.map_err(|e| e.to_string()) });
        (Client::Http2(sender), task)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let task = tokio::spawn(async move { conn.await.map_err(|e| e.to_string()) });
        (Client::Http1(sender), task)
    }
}

/// A TLS connection for `host` offering `alpn`, and the protocol the server picked.
async fn connect_tls(
    replay: &Replay,
    host: &str,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(replay.ca.cert_der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let stream = TcpStream::connect(replay.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .unwrap();
    let picked = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, picked)
}

/// An HTTP/2 connection over TLS, `h2` picked by ALPN.
async fn connect_h2(replay: &Replay, host: &str) -> Client {
    let (tls, picked) = connect_tls(replay, host, &[b"h2", b"http/1.1"]).await;
    assert_eq!(picked.as_deref(), Some(&b"h2"[..]), "replayd picks h2");
    handshake(tls, true).await.0
}

/// A request as a client over `version` sends it: HTTP/2 names the host in the target.
fn request(version: Version, host: &str, path: &str, body: &[u8]) -> Request<Full<Bytes>> {
    let builder = if version == Version::HTTP_2 {
        Request::post(format!("https://{host}{path}"))
    } else {
        Request::post(path).header("host", host)
    };
    builder
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap()
}

fn ask_chat(version: Version, prompt: &str) -> Request<Full<Bytes>> {
    request(
        version,
        OPENAI,
        "/v1/chat/completions",
        chat(prompt, false).to_string().as_bytes(),
    )
}

/// The status, headers, body and trailers of `response`.
async fn read(response: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

#[tokio::test]
async fn tls_offers_h2_and_http11_by_alpn_and_serves_the_same_bytes_over_both() {
    let answer = json!({"id": "chatcmpl-1", "answer": "nonce-h2"});
    let recorded = chat_exchange("hello", &answer);
    let expected = recorded.response.body.to_bytes();
    let replay = serve(&[recorded], ReplayOptions::default());

    let mut h2 = connect_h2(&replay, OPENAI).await;
    let response = h2.send(ask_chat(Version::HTTP_2, "hello")).await;
    assert_eq!(response.version(), Version::HTTP_2);
    let (status, headers, body, _) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, expected, "the recorded bytes, over HTTP/2");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-request-id"], "req_1");
    assert_eq!(
        headers["content-length"],
        expected.len().to_string(),
        "the length is recomputed, not the recorded 9999"
    );
    for name in CONNECTION_HEADERS {
        assert!(!headers.contains_key(*name), "{name} sent over HTTP/2");
    }

    let (tls, picked) = connect_tls(&replay, OPENAI, &[b"http/1.1"]).await;
    assert_eq!(picked.as_deref(), Some(&b"http/1.1"[..]));
    let (mut h1, _) = handshake(tls, false).await;
    let response = h1.send(ask_chat(Version::HTTP_11, "hello")).await;
    assert_eq!(response.version(), Version::HTTP_11);
    let (status, headers, body, _) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, expected, "the same bytes over HTTP/1.1");
    assert_eq!(headers["content-length"], expected.len().to_string());
    assert!(!headers.contains_key("transfer-encoding"));
}

#[tokio::test]
async fn plain_connections_speak_h2c_with_prior_knowledge_and_http11_otherwise() {
    let answer = json!({"answer": "cleartext"});
    let recorded = chat_exchange("plain", &answer);
    let expected = recorded.response.body.to_bytes();
    let replay = serve(&[recorded], ReplayOptions::default());

    let stream = TcpStream::connect(replay.addr).await.unwrap();
    let (mut h2c, _) = handshake(stream, true).await;
    let response = h2c
        .send(
            Request::post("http://api.openai.com/v1/chat/completions")
                .body(Full::new(Bytes::from(chat("plain", false).to_string())))
                .unwrap(),
        )
        .await;
    assert_eq!(response.version(), Version::HTTP_2);
    let (status, _, body, _) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, expected);

    let stream = TcpStream::connect(replay.addr).await.unwrap();
    let (mut h1, _) = handshake(stream, false).await;
    let response = h1.send(ask_chat(Version::HTTP_11, "plain")).await;
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(read(response).await.2, expected);
}

#[tokio::test]
async fn an_exchange_recorded_over_h2_is_served_over_http11() {
    let mut recorded = chat_exchange("from h2", &json!({"answer": "was h2"}));
    recorded.http_version = llmsim_snapshot::model::HttpVersion::Http2;
    recorded.response.headers = [
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", "1"),
        ("x-request-id", "req_h2"),
    ]
    .into_iter()
    .collect();
    let expected = recorded.response.body.to_bytes();
    let replay = serve(&[recorded], ReplayOptions::default());
    let (tls, _) = connect_tls(&replay, OPENAI, &[b"http/1.1"]).await;
    let (mut h1, _) = handshake(tls, false).await;
    let (status, headers, body, _) =
        read(h1.send(ask_chat(Version::HTTP_11, "from h2")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, expected);
    assert_eq!(headers["content-length"], expected.len().to_string());
    assert_eq!(headers["x-request-id"], "req_h2");
    assert!(headers.keys().all(|name| !name.as_str().starts_with(':')));
}

#[tokio::test]
async fn trailers_are_replayed_over_h2_and_announced_over_http11() {
    let recorded = grpc_exchange();
    let replay = serve(&[recorded], ReplayOptions::default());
    let call = |version| {
        let mut request = request(
            version,
            GRPC_HOST,
            "/llmsim.test.Echo/Say",
            &grpc_frame(b"ping"),
        );
        request
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        request
            .headers_mut()
            .insert("te", "trailers".parse().unwrap());
        request
    };

    let mut h2 = connect_h2(&replay, GRPC_HOST).await;
    let (status, headers, body, trailers) = read(h2.send(call(Version::HTTP_2)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(body, grpc_frame(b"pong"));
    let trailers = trailers.expect("trailers over HTTP/2");
    let got: Vec<(&str, &str)> = trailers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(got, [("grpc-status", "0"), ("grpc-message", "done")]);

    let (tls, _) = connect_tls(&replay, GRPC_HOST, &[b"http/1.1"]).await;
    let (mut h1, _) = handshake(tls, false).await;
    let (status, headers, body, trailers) = read(h1.send(call(Version::HTTP_11)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["trailer"], "grpc-status, grpc-message");
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert_eq!(body, grpc_frame(b"pong"));
    let trailers = trailers.expect("announced trailers over HTTP/1.1");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
}

#[tokio::test]
async fn paced_events_go_out_one_data_frame_each_at_their_offsets() {
    let offsets = [20.0, 120.0, 180.0, 300.0];
    let replay = serve(&[sse_exchange(&offsets)], ReplayOptions::default());
    let mut h2 = connect_h2(&replay, OPENAI).await;
    let started = Instant::now();
    let response = h2
        .send(request(
            Version::HTTP_2,
            OPENAI,
            "/v1/chat/completions",
            chat("stream please", true).to_string().as_bytes(),
        ))
        .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(!response.headers().contains_key("transfer-encoding"));
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push((started.elapsed(), data));
        }
    }
    let texts: Vec<&[u8]> = frames.iter().map(|(_, data)| &data[..]).collect();
    let expected: Vec<String> = (0..offsets.len())
        .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
        .collect();
    assert_eq!(
        texts,
        expected.iter().map(String::as_bytes).collect::<Vec<_>>(),
        "one DATA frame per event, in order"
    );
    for ((at, _), offset) in frames.iter().zip(offsets) {
        assert!(
            *at >= Duration::from_secs_f64(offset / 1e3),
            "an event arrived at {at:?}, before its recorded {offset} ms"
        );
    }
    let last = frames.last().unwrap().0;
    assert!(
        last < Duration::from_millis(300 + 250),
        "the stream took {last:?}"
    );
}

#[tokio::test]
async fn a_large_answer_is_sent_within_the_client_s_flow_control_windows() {
    let answer = json!({"answer": "large", "pad": "y".repeat(1 << 20)});
    let recorded = chat_exchange("large", &answer);
    let expected = recorded.response.body.to_bytes();
    let replay = serve(&[recorded], ReplayOptions::default());
    let (tls, _) = connect_tls(&replay, OPENAI, &[b"h2"]).await;
    // A client that opens its windows only as it reads: 16 KiB per stream and connection.
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(ask_chat(Version::HTTP_2, "large"))
        .await
        .unwrap();
    let (status, headers, body, _) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], expected.len().to_string());
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "the large body arrived intact");
}

#[tokio::test]
async fn a_hundred_concurrent_streams_on_one_connection_each_get_their_answer() {
    let recorded: Vec<Exchange> = (0..100)
        .map(|i| {
            chat_exchange(
                &format!("prompt {i}"),
                &json!({"answer": format!("answer {i}"), "pad": "x".repeat(1000)}),
            )
        })
        .collect();
    let expected: Vec<Vec<u8>> = recorded
        .iter()
        .map(|e| e.response.body.to_bytes())
        .collect();
    let replay = serve(&recorded, ReplayOptions::default());
    let Client::Http2(sender) = connect_h2(&replay, OPENAI).await else {
        unreachable!("connect_h2 speaks HTTP/2");
    };
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let mut sender = sender.clone();
        calls.spawn(async move {
            let response = sender
                .send_request(ask_chat(Version::HTTP_2, &format!("prompt {i}")))
                .await
                .unwrap();
            (i, read(response).await)
        });
    }
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        let (i, (status, _, body, _)) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "stream {i}");
        assert_eq!(body, expected[i], "stream {i}'s body");
        answered += 1;
    }
    assert_eq!(answered, 100);
    assert_eq!(replay.running.report().total_served, 100);
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_the_stream_under_way_finish() {
    let offsets = [10.0, 300.0, 600.0];
    let replay = serve(&[sse_exchange(&offsets)], ReplayOptions::default());
    let (tls, _) = connect_tls(&replay, OPENAI, &[b"h2"]).await;
    let (client, connection) = handshake(tls, true).await;
    let Client::Http2(mut sender) = client else {
        unreachable!("an HTTP/2 handshake");
    };
    let response = sender
        .send_request(request(
            Version::HTTP_2,
            OPENAI,
            "/v1/chat/completions",
            chat("stream please", true).to_string().as_bytes(),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: {\"n\":0}\n\n");

    let finished = tokio::spawn(replay.running.finish());
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        rest.push(
            frame
                .expect("the stream under way finishes")
                .into_data()
                .unwrap(),
        );
    }
    assert_eq!(rest, ["data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n"]);
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the connection closes after the stream")
        .unwrap();
    assert_eq!(ended, Ok(()), "closed by GOAWAY, not cut");
    assert!(
        sender
            .send_request(ask_chat(Version::HTTP_2, "late"))
            .await
            .is_err(),
        "no new streams after GOAWAY"
    );
    assert_eq!(finished.await.unwrap().total_served, 1);
}

/// An HTTPS upstream offering only `h2`, answering every request with the JSON
/// `{"version": ..., "authority": ..., "path": ...}` it saw, then the trailer
/// `upstream-status: done`.
async fn h2_upstream(ca: &Arc<CertificateAuthority>, seen: Arc<Mutex<Vec<Version>>>) -> SocketAddr {
    let resolver = Arc::new(LeafResolver::new(ca.clone()).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(resolver.server_config(&[b"h2"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(request.version());
                        let answer = json!({
                            "version": format!("{:?}", request.version()),
                            "authority": request.uri().authority().map(ToString::to_string),
                            "path": request.uri().path(),
                        });
                        let mut trailers = HeaderMap::new();
                        trailers.insert("upstream-status", "done".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(
                                    ReplayBody::full(answer.to_string())
                                        .with_trailers(Some(trailers)),
                                )
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_miss_is_forwarded_over_h2_when_the_upstream_offers_it_with_its_trailers() {
    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream_ca =
        Arc::new(CertificateAuthority::load_or_create(&upstream_dir.path().join("ca")).unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = h2_upstream(&upstream_ca, seen.clone()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(upstream_ca.cert_der().clone()).unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let settings = UpstreamSettings {
        on_miss: OnMiss::Record,
        roots: Roots::Custom(roots),
        connect_to: Some(upstream),
        redaction_dir: Some(key_dir.path().to_owned()),
        ..UpstreamSettings::default()
    };
    let options = ReplayOptions {
        on_miss: OnMiss::Record,
        ..ReplayOptions::default()
    };
    let replay = serve_with(&[], options, settings);

    // The app speaks HTTP/1.1 to replayd; replayd speaks HTTP/2 to the upstream.
    let (tls, _) = connect_tls(&replay, OPENAI, &[b"http/1.1"]).await;
    let (mut h1, _) = handshake(tls, false).await;
    let (status, _, body, _) = read(h1.send(ask_chat(Version::HTTP_11, "missing")).await).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        answer,
        json!({"version": "HTTP/2.0", "authority": OPENAI, "path": "/v1/chat/completions"})
    );
    assert_eq!(*seen.lock().unwrap(), [Version::HTTP_2]);

    // An app speaking HTTP/2 gets the upstream's trailers too.
    let mut h2 = connect_h2(&replay, OPENAI).await;
    let response = h2.send(ask_chat(Version::HTTP_2, "also missing")).await;
    let (status, _, body, trailers) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["version"],
        "HTTP/2.0"
    );
    let trailers = trailers.expect("the upstream's trailers");
    assert_eq!(trailers["upstream-status"], "done");

    let mut files: Vec<_> = std::fs::read_dir(replay.dir.path().join("exchanges"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in files {
        let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(written["http_version"], "2", "{written:#}");
        assert_eq!(
            written["response"]["trailers"],
            json!([["upstream-status", "done"]]),
            "{written:#}"
        );
    }
}
