//! In-process tests of replayd's HTTP core over a loopback listener, with a real HTTP
//! client (hyper's), as in axum's testing example: small snapshots are written to temporary
//! directories with the snapshot crate's writer, served by `run::Server`, and asked over
//! plain HTTP and TLS. No root, no kernel hooks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use llmsim_replayd::accept::OriginalDestination;
use llmsim_replayd::ca::{CertificateAuthority, LeafResolver};
use llmsim_replayd::options::{Pace, ReplayOptions};
use llmsim_replayd::run::{self, ListenAddr, Running, Server};
use llmsim_snapshot::model::{Body, Exchange, JsonStyle, SseEvent};
use llmsim_snapshot::provider::Provider;
use llmsim_snapshot::signature::Repeat;
use llmsim_tests::snapshot;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPENAI: &str = "api.openai.com";

fn chat(prompt: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
}

/// A chat-shaped exchange python3 recorded from `host`.
fn exchange(host: &str, path: &str, request: &Value, response: &Body) -> Exchange {
    snapshot::exchange(json!({
        "provider": Provider::from_host(host),
        "host": host,
        "scheme": "https",
        "process": {"pid": 7, "comm": "python3", "exe": null},
        "started_at": "2026-07-01T09:00:00Z",
        "ttfb_ms": 10.0,
        "duration_ms": 250.0,
        "streamed": matches!(response, Body::Sse { .. }),
        "model": "gpt-4o-mini",
        "request": {
            "method": "POST",
            "path": path,
            "headers": [["content-type", "application/json"]],
            "body": {"kind": "json", "json": request},
        },
        "response": {
            "status": 200,
            "headers": [["content-type", "application/json"]],
            "body": response,
        },
    }))
}

fn answer(json: Value) -> Body {
    Body::compact_json(json)
}

fn chat_exchange(prompt: &str, reply: Value) -> Exchange {
    exchange(
        OPENAI,
        "/v1/chat/completions",
        &chat(prompt, false),
        &answer(reply),
    )
}

/// A served snapshot; dropping it stops the server and removes the directory.
struct Replay {
    addr: SocketAddr,
    running: Running,
    ca: Option<Arc<CertificateAuthority>>,
    _dir: tempfile::TempDir,
}

fn serve(exchanges: &[Exchange], options: ReplayOptions, tls: bool) -> Replay {
    serve_with(exchanges, options, tls, None)
}

fn serve_with(
    exchanges: &[Exchange],
    options: ReplayOptions,
    tls: bool,
    original_destination: Option<Arc<dyn OriginalDestination>>,
) -> Replay {
    let dir = tempfile::tempdir().unwrap();
    snapshot::write(dir.path(), exchanges.iter().cloned());
    let engine = Arc::new(run::load_engine(dir.path(), options).unwrap());
    let (ca, resolver) = if tls {
        let ca = Arc::new(CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap());
        let resolver = Arc::new(LeafResolver::new(ca.clone()).unwrap());
        (Some(ca), Some(resolver))
    } else {
        (None, None)
    };
    let server = Server::bind(
        engine,
        resolver,
        &[ListenAddr::required("127.0.0.1:0".parse().unwrap())],
    )
    .unwrap();
    let addr = server.local_addrs()[0];
    Replay {
        addr,
        running: server.start(original_destination),
        ca,
        _dir: dir,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn connect_tls(replay: &Replay, server_name: &str) -> Sender {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    connect_tls_to(replay, name).await
}

async fn connect_tls_to(replay: &Replay, name: rustls::pki_types::ServerName<'static>) -> Sender {
    connect_tls_with(replay, &client_config(replay), name)
        .await
        .0
}

/// A client trusting the replay CA; its session cache lets later connections resume.
fn client_config(replay: &Replay) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(replay.ca.as_ref().unwrap().cert_der().clone())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(llmsim_replayd::ca::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection with `config`, and whether its handshake resumed an earlier session.
async fn connect_tls_with(
    replay: &Replay,
    config: &Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
) -> (Sender, bool) {
    let stream = TcpStream::connect(replay.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
        .unwrap();
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (sender, resumed)
}

fn post(host: &str, path: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn a_hit_returns_the_recorded_status_headers_and_body() {
    let mut recorded = chat_exchange("hello", json!({"id": "chatcmpl-1", "answer": "nonce-1"}));
    recorded.response.status = 201;
    recorded.response.headers = [
        ("Content-Type", "application/json"),
        ("x-request-id", "req_abc"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("Content-Length", "9999"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive"),
        ("Content-Encoding", "gzip"),
    ]
    .into_iter()
    .collect();
    recorded.response.body = Body::Json {
        content_encoding: Some("gzip".into()),
        json: json!({"id": "chatcmpl-1", "answer": "nonce-1"}),
        style: JsonStyle::default(),
        verbatim: None,
        offsets_ms: None,
    };
    let expected_body = recorded.response.body.to_bytes();
    let replay = serve(&[recorded], ReplayOptions::default(), false);
    let mut client = connect(replay.addr).await;
    let response = client
        .send_request(post(OPENAI, "/v1/chat/completions", &chat("hello", false)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], &expected_body[..]);
    assert_eq!(headers["x-request-id"], "req_abc");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers.get_all("set-cookie").iter().collect::<Vec<_>>(),
        ["a=1", "b=2"]
    );
    assert_eq!(headers["content-length"], expected_body.len().to_string());
    assert!(headers.get("transfer-encoding").is_none());
    assert!(
        headers.get("content-encoding").is_none(),
        "the body is sent decoded"
    );
    let report = replay.running.report();
    assert_eq!(report.total_served, 1);
    assert_eq!(report.served[0].endpoint, "POST /v1/chat/completions");
}

#[tokio::test]
async fn duplicates_are_served_in_recorded_order_then_the_repeat_policy() {
    let recorded = [
        chat_exchange("again", json!({"n": 1})),
        chat_exchange("other", json!({"n": 0})),
        chat_exchange("again", json!({"n": 2})),
    ];
    for (repeat, third) in [
        (Repeat::Last, Some(json!({"n": 2}))),
        (Repeat::Cycle, Some(json!({"n": 1}))),
        (Repeat::Fail, None),
    ] {
        let options = ReplayOptions {
            repeat,
            ..ReplayOptions::default()
        };
        let replay = serve(&recorded, options, false);
        let mut client = connect(replay.addr).await;
        let mut answers = Vec::new();
        for _ in 0..3 {
            client.ready().await.unwrap();
            let response = client
                .send_request(post(OPENAI, "/v1/chat/completions", &chat("again", false)))
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json: Value = serde_json::from_slice(&body).unwrap();
            answers.push((status, json));
        }
        let repeats = u64::from(third.is_some());
        assert_eq!(answers[0], (StatusCode::OK, json!({"n": 1})), "{repeat:?}");
        assert_eq!(answers[1], (StatusCode::OK, json!({"n": 2})), "{repeat:?}");
        if let Some(want) = third {
            assert_eq!(answers[2], (StatusCode::OK, want), "{repeat:?}");
        } else {
            assert_eq!(answers[2].0, StatusCode::NOT_FOUND);
            let message = answers[2].1["error"]["message"].as_str().unwrap();
            assert!(message.contains("already served"), "{message}");
        }
        let report = replay.running.report();
        assert_eq!(report.repeats, repeats, "{repeat:?}");
        assert_eq!(report.failed(), repeats == 0, "{repeat:?}");
    }
}

#[tokio::test]
async fn a_miss_is_provider_shaped_and_names_the_differing_field() {
    let recorded = [
        chat_exchange("What is the capital of France?", json!({})),
        exchange(
            "api.anthropic.com",
            "/v1/messages",
            &json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Say hi"}]}),
            &answer(json!({})),
        ),
        exchange(
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent",
            &json!({"contents": [{"parts": [{"text": "Say hi"}]}]}),
            &answer(json!({})),
        ),
    ];
    let replay = serve(&recorded, ReplayOptions::default(), false);
    let mut client = connect(replay.addr).await;

    let (head, body) = send_json(
        &mut client,
        post(
            OPENAI,
            "/v1/chat/completions",
            &chat("What is the capital of Italy?", false),
        ),
    )
    .await;
    assert_eq!(head, StatusCode::NOT_FOUND);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no recording matches"), "{message}");
    assert!(
        message.contains("exchanges/000001-openai-post-v1-chat-completions.json"),
        "{message}"
    );
    assert!(message.contains("/messages/0/content"), "{message}");
    assert!(message.contains("Italy"), "{message}");
    assert_eq!(body["error"]["code"], "llmsim_no_recording");
    assert!(body["error"]["type"].is_string());

    let (head, body) = send_json(
        &mut client,
        post(
            "api.anthropic.com",
            "/v1/messages",
            &json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Say bye"}]}),
        ),
    )
    .await;
    assert_eq!(head, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("000002-anthropic-post-v1-messages.json"),
        "{message}"
    );
    assert!(message.contains("/messages/0/content"), "{message}");

    let (head, body) = send_json(
        &mut client,
        post(
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent",
            &json!({"contents": [{"parts": [{"text": "Say bye"}]}]}),
        ),
    )
    .await;
    assert_eq!(head, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], 404);
    assert_eq!(body["error"]["status"], "NOT_FOUND");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/contents/0/parts/0/text"), "{message}");

    let report = replay.running.report();
    assert_eq!(report.misses.len(), 3);
    assert!(report.failed());
    assert!(
        report
            .to_string()
            .contains("replayd: miss: POST api.openai.com/v1/chat/completions")
    );
}

async fn send_json(client: &mut Sender, request: Request<Full<Bytes>>) -> (StatusCode, Value) {
    client.ready().await.unwrap();
    let response = client.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn sse_exchange(offsets: &[f64]) -> Exchange {
    let events = offsets
        .iter()
        .enumerate()
        .map(|(i, &offset_ms)| SseEvent {
            offset_ms,
            event: None,
            data: format!("{{\"n\":{i}}}"),
            id: None,
            retry: None,
        })
        .collect();
    let mut ex = exchange(
        OPENAI,
        "/v1/chat/completions",
        &chat("stream please", true),
        &Body::Sse {
            content_encoding: None,
            events,
            unterminated: None,
        },
    );
    ex.ttfb_ms = offsets[0];
    ex.response.headers = [
        ("content-type", "text/event-stream"),
        ("transfer-encoding", "chunked"),
    ]
    .into_iter()
    .collect();
    ex
}

/// Sends the streamed request and returns, per event, when its last byte arrived (from
/// just before sending) and its text.
async fn stream_events(replay: &Replay) -> (Vec<(Duration, String)>, http::HeaderMap) {
    let mut client = connect(replay.addr).await;
    let started = Instant::now();
    let response = client
        .send_request(post(
            OPENAI,
            "/v1/chat/completions",
            &chat("stream please", true),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut pending = String::new();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        pending.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            events.push((started.elapsed(), event));
        }
    }
    assert!(pending.is_empty(), "trailing bytes: {pending:?}");
    (events, headers)
}

#[tokio::test]
async fn sse_is_paced_as_recorded_or_at_once() {
    let offsets = [20.0, 120.0, 180.0, 300.0];
    let recorded = [sse_exchange(&offsets)];
    let expected: Vec<String> = (0..offsets.len())
        .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
        .collect();

    let replay = serve(&recorded, ReplayOptions::default(), false);
    let (events, headers) = stream_events(&replay).await;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert!(headers.get("content-length").is_none());
    let texts: Vec<&str> = events.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, expected);
    let mut late_ms = Vec::new();
    for ((at, text), offset) in events.iter().zip(offsets) {
        assert!(
            *at >= Duration::from_secs_f64(offset / 1e3),
            "{text:?} arrived at {at:?}, before its recorded offset {offset} ms"
        );
        late_ms.push(at.as_secs_f64() * 1e3 - offset);
    }
    // The tolerance is 2 ms, counted here from before the request was sent. The median
    // leaves out one event that a busy machine held up.
    late_ms.sort_by(f64::total_cmp);
    let median = f64::midpoint(late_ms[1], late_ms[2]);
    assert!(
        median <= 2.0,
        "events went out {late_ms:?} ms after their recorded offsets"
    );

    let instant = ReplayOptions {
        pace: Pace::Instant,
        ..ReplayOptions::default()
    };
    let replay = serve(&recorded, instant, false);
    let (events, _) = stream_events(&replay).await;
    let texts: Vec<&str> = events.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, expected);
}

#[tokio::test]
async fn tls_with_the_replay_ca_and_sni() {
    let recorded = [chat_exchange("over tls", json!({"answer": "secure"}))];
    let replay = serve(&recorded, ReplayOptions::default(), true);
    let mut client = connect_tls(&replay, OPENAI).await;
    // The Host header is ignored: the SNI names the host.
    let (status, body) = send_json(
        &mut client,
        post(
            "127.0.0.1",
            "/v1/chat/completions",
            &chat("over tls", false),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"answer": "secure"}));

    // A host with no recording still completes the handshake, then gets the miss answer.
    let mut client = connect_tls(&replay, "api.unrecorded.example").await;
    let (status, body) = send_json(
        &mut client,
        post(
            "api.unrecorded.example",
            "/v1/chat/completions",
            &chat("over tls", false),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("host: recorded \"api.openai.com\""),
        "{message}"
    );

    // Plain HTTP still works on the same port.
    let mut plain = connect(replay.addr).await;
    let (status, _) = send_json(
        &mut plain,
        post(OPENAI, "/v1/chat/completions", &chat("over tls", false)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_sni_the_leaf_is_for_the_original_destination() {
    let recorded = [chat_exchange("no sni", json!({"answer": "by ip"}))];
    let original: SocketAddr = "203.0.113.7:443".parse().unwrap();
    let lookup = Arc::new(move |_client: SocketAddr| Some(original));
    let replay = serve_with(&recorded, ReplayOptions::default(), true, Some(lookup));
    // rustls sends no SNI for an IP address; the leaf must name that IP to verify.
    let name = rustls::pki_types::ServerName::IpAddress(original.ip().into());
    let mut client = connect_tls_to(&replay, name).await;
    let (status, body) = send_json(
        &mut client,
        post(OPENAI, "/v1/chat/completions", &chat("no sni", false)),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"answer": "by ip"})));
}

#[tokio::test]
async fn sessions_to_an_original_destination_resume_across_connections() {
    let recorded = [chat_exchange("resume", json!({"answer": "again"}))];
    let original: SocketAddr = "203.0.113.8:443".parse().unwrap();
    let lookup = Arc::new(move |_client: SocketAddr| Some(original));
    let replay = serve_with(&recorded, ReplayOptions::default(), true, Some(lookup));
    let config = client_config(&replay);
    let name = rustls::pki_types::ServerName::IpAddress(original.ip().into());
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let (mut client, was_resumed) = connect_tls_with(&replay, &config, name.clone()).await;
        // Reading an answer also takes in the session tickets sent after the handshake.
        let (status, _) = send_json(
            &mut client,
            post(OPENAI, "/v1/chat/completions", &chat("resume", false)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        resumed.push(was_resumed);
    }
    assert_eq!(
        resumed,
        [false, true],
        "the second handshake resumes the first session"
    );
}

#[tokio::test]
async fn malformed_http_gets_400_and_the_server_keeps_serving() {
    let recorded = [chat_exchange("still here", json!({"ok": true}))];
    let replay = serve(&recorded, ReplayOptions::default(), false);
    for garbage in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
    ] {
        let mut stream = TcpStream::connect(replay.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        // The server answers, then closes: reading to the end must finish.
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{garbage:?} got {answer:?}"
        );
    }
    let mut client = connect(replay.addr).await;
    let (status, body) = send_json(
        &mut client,
        post(OPENAI, "/v1/chat/completions", &chat("still here", false)),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true})));
}

#[tokio::test]
async fn listen_mode_matches_through_the_listener_address() {
    let recorded = [chat_exchange("via base url", json!({"ok": 1}))];
    let replay = serve(&recorded, ReplayOptions::listen(), false);
    let mut client = connect(replay.addr).await;
    let host = replay.addr.to_string();
    let (status, body) = send_json(
        &mut client,
        post(&host, "/v1/chat/completions", &chat("via base url", false)),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": 1})));
    let (status, body) = send_json(
        &mut client,
        post(&host, "/v1/chat/completions", &chat("changed", false)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/messages/0/content"), "{message}");
    assert!(!message.contains("host:"), "{message}");
}
