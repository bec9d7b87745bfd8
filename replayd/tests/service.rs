//! In-process tests of replayd's HTTP core over a loopback listener, with a real HTTP
//! client (hyper's), as in axum's testing example: small snapshots are written to temporary
//! directories with the snapshot crate's writer, served by `run::Server`, and asked over
//! plain HTTP and TLS. No root, no kernel hooks.

mod stalls;

use std::io::Write as _;
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
use stalls::StallWatch;
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
            wire: None,
        })
        .collect();
    let mut ex = exchange(
        OPENAI,
        "/v1/chat/completions",
        &chat("stream please", true),
        &Body::Sse {
            content_encoding: None,
            crlf: false,
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

/// A streamed answer as the client saw it.
struct Streamed {
    /// Just before the request was sent.
    sent: Instant,
    /// When the answer's head arrived: replayd took the instant it paces from before then.
    answered: Instant,
    /// Per event, when its last byte arrived and its text.
    events: Vec<(Instant, String)>,
    /// The response's headers.
    headers: http::HeaderMap,
}

/// Sends the streamed request on `client` and reads its events as they arrive.
async fn stream_events(client: &mut Sender) -> Streamed {
    client.ready().await.unwrap();
    let sent = Instant::now();
    let response = client
        .send_request(post(
            OPENAI,
            "/v1/chat/completions",
            &chat("stream please", true),
        ))
        .await
        .unwrap();
    let answered = Instant::now();
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
            events.push((Instant::now(), event));
        }
    }
    assert!(pending.is_empty(), "trailing bytes: {pending:?}");
    Streamed {
        sent,
        answered,
        events,
        headers,
    }
}

/// How late an event may arrive after its recorded offset, counted from before the request
/// was sent.
const PACING_TOLERANCE: Duration = Duration::from_millis(2);
/// How many events of a run may arrive later than `PACING_TOLERANCE`, each only if a
/// recorded machine stall overlaps the time from when it was due to when it arrived, or
/// the time from sending the request to the answer's head (replayd paces from when it read
/// the request, so a stall then shifts every event).
const STALL_EXCUSES: usize = 1;
/// How many times the stream is run when machine stalls hold up more events than
/// `STALL_EXCUSES`.
const STALLED_RUNS: usize = 5;

/// How one paced run went.
enum PacedRun {
    /// Every event in time, or at most `STALL_EXCUSES` late during a recorded stall.
    InTime {
        /// The excused events, with their stalls.
        excused: Vec<String>,
    },
    /// More events than `STALL_EXCUSES` late during recorded stalls (others may be late
    /// too): the machine did not run the stream, and it is run again.
    Stalled(String),
    /// An event early, or late with no stall recorded.
    Failed(String),
}

/// The prompt of the request that opens a paced run's connection, answered at once.
const OPENING: &str = "open the connection";

fn opening_exchange() -> Exchange {
    chat_exchange(OPENING, json!({"opened": true}))
}

/// Streams the paced answer once under a stall watch and holds each event to the tolerance.
/// The stream is asked on a connection replayd already serves (the opening exchange first),
/// so that what is timed is the pacing, not how the connection was accepted and handed to a
/// serving thread.
async fn paced_run(replay: &Replay, offsets: &[f64], expected: &[String]) -> PacedRun {
    let mut client = connect(replay.addr).await;
    let opening = post(OPENAI, "/v1/chat/completions", &chat(OPENING, false));
    assert_eq!(send_json(&mut client, opening).await.0, StatusCode::OK);
    // The client runs on this thread, the server on replayd's serving threads, each woken by
    // its own timer at each event.
    let watch = StallWatch::start(&["replayd-serve-"]);
    let streamed = stream_events(&mut client).await;
    let stalls = watch.stop();
    assert_eq!(streamed.headers["content-type"], "text/event-stream");
    assert_eq!(streamed.headers["transfer-encoding"], "chunked");
    assert!(streamed.headers.get("content-length").is_none());
    let texts: Vec<&str> = streamed.events.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, expected);

    let sent = streamed.sent;
    let answered = streamed.answered;
    let tolerance_ms = PACING_TOLERANCE.as_secs_f64() * 1e3;
    let mut arrivals = Vec::new();
    let mut early = 0;
    let mut unexcused = 0;
    let mut excused = Vec::new();
    for (i, ((at, _), offset)) in streamed.events.iter().zip(offsets).enumerate() {
        let due = sent + Duration::from_secs_f64(offset / 1e3);
        let late_ms = stalls::ms_between(due, *at);
        let mut line =
            format!("event {i}, recorded at {offset} ms, arrived {late_ms:+.3} ms after it");
        if late_ms < 0.0 {
            early += 1;
            line.push_str(": early");
        } else if late_ms > tolerance_ms {
            let during: Vec<String> = stalls
                .iter()
                .filter(|stall| stall.overlaps(due, *at) || stall.overlaps(sent, answered))
                .map(|stall| stall.since(sent).to_string())
                .collect();
            if during.is_empty() {
                unexcused += 1;
                line.push_str(": late, with no stall recorded");
            } else {
                line.push_str(": late, during ");
                line.push_str(&during.join(" and "));
                excused.push(line.clone());
            }
        }
        arrivals.push(line);
    }
    let stalls: Vec<String> = stalls
        .iter()
        .map(|stall| stall.since(sent).to_string())
        .collect();
    let report = format!(
        "{early} arrived early, {unexcused} late with no stall recorded, {} late during a \
         stall:\n{}\nstalls recorded (times from before the request was sent):\n{}",
        excused.len(),
        arrivals.join("\n"),
        stalls.join("\n"),
    );
    // A run in which stalls held up several events says nothing about replayd, whatever its
    // other late events; an early event is never the machine's doing.
    if early > 0 {
        PacedRun::Failed(report)
    } else if excused.len() > STALL_EXCUSES {
        PacedRun::Stalled(report)
    } else if unexcused > 0 {
        PacedRun::Failed(report)
    } else {
        PacedRun::InTime { excused }
    }
}

/// Under `--pace recorded` every event arrives no earlier than its recorded offset and no
/// more than `PACING_TOLERANCE` (2 ms) after it. The allowance is for the machine rather
/// than for replayd: a stall watch (see `stalls`) runs alongside the stream and records
/// when the process was not run (a paused virtual machine, or this test's thread or replayd's
/// serving threads kept waiting for a CPU). An event later than the
/// tolerance is excused when a recorded stall overlaps the time from the event's due instant
/// to its arrival, or the time from sending the request to the answer's head (replayd paces
/// from when it read the request, so a stall before then shifts every event), at most
/// `STALL_EXCUSES` (1) of the 10 events of a run (they are at least 15 ms apart, so that a
/// short stall holds up only one). A run with more events held up by stalls says nothing
/// about replayd (other events of it may be late too, held up by waits too short for the
/// watch to see): it is reported and run again, up to `STALLED_RUNS` (5) runs. Every excuse
/// and every stalled run is written to stderr past the test harness's capture, so a passing
/// test still shows them. An early event, or a late one with no stall recorded, fails the
/// test at once, with every event and every stall in the message. A first, unmeasured stream
/// warms the connection path and starts the serving thread's timer. Under `--pace instant` the same events arrive, in order.
#[tokio::test]
async fn sse_is_paced_as_recorded_or_at_once() {
    let offsets = [
        20.0, 45.0, 70.0, 95.0, 120.0, 150.0, 180.0, 220.0, 260.0, 300.0,
    ];
    let recorded = [sse_exchange(&offsets), opening_exchange()];
    let expected: Vec<String> = (0..offsets.len())
        .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
        .collect();

    let replay = serve(&recorded, ReplayOptions::default(), false);
    let warm_up = stream_events(&mut connect(replay.addr).await).await;
    assert_eq!(warm_up.events.len(), offsets.len());
    let mut stalled = Vec::new();
    let excused = loop {
        match paced_run(&replay, &offsets, &expected).await {
            PacedRun::InTime { excused } => break excused,
            PacedRun::Failed(report) => panic!(
                "events must arrive within {PACING_TOLERANCE:?} after their recorded offsets, \
                 none early, a late one only during a machine stall; {report}\n\
                 earlier runs held up by stalls:\n{}",
                stalled.join("\n")
            ),
            PacedRun::Stalled(report) => {
                stalled.push(report);
                assert!(
                    stalled.len() < STALLED_RUNS,
                    "machine stalls held up more than {STALL_EXCUSES} event in each of \
                     {STALLED_RUNS} runs:\n{}",
                    stalled.join("\n")
                );
            }
        }
    };
    for report in &stalled {
        writeln!(
            std::io::stderr(),
            "sse_is_paced_as_recorded_or_at_once: run again after machine stalls: {report}"
        )
        .unwrap();
    }
    for excuse in &excused {
        writeln!(
            std::io::stderr(),
            "sse_is_paced_as_recorded_or_at_once: excused as a machine stall: {excuse}"
        )
        .unwrap();
    }

    let instant = ReplayOptions {
        pace: Pace::Instant,
        ..ReplayOptions::default()
    };
    let replay = serve(&recorded, instant, false);
    let streamed = stream_events(&mut connect(replay.addr).await).await;
    let texts: Vec<&str> = streamed.events.iter().map(|(_, t)| t.as_str()).collect();
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
