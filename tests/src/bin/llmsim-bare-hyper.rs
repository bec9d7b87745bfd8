//! hyper with nothing of replayd in it, for `cargo xtask bench replay --only sdk-post`:
//! the ceiling for a server built on hyper, which tells replayd's own cost per request
//! apart from its HTTP stack's. It answers every request with the first exchange of a
//! snapshot as replayd sends it (the recorded status, the recorded headers but
//! `Content-Length` and the hop-by-hop ones, the body), after reading the request whole
//! as replayd must before it can match one, with no signature, lookup, statistics or
//! pacing. It serves as replayd does: one thread per core, each with a single-threaded
//! Tokio runtime, the accepted connections handed to them in turn, no Nagle, an answer's head
//! and body sent with one `write`.
//!
//! Usage: `llmsim-bare-hyper SNAPSHOT_DIR`; prints `listening on ADDR` (a free loopback
//! port) on stderr, as replayd does, and serves until killed.

use std::convert::Infallible;
use std::net::{Ipv4Addr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use llmsim_tests::snapshot::end_to_end;
use tokio::sync::mpsc;

/// The answer every request gets.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: llmsim-bare-hyper SNAPSHOT_DIR");
        return ExitCode::from(2);
    };
    match answer(dir.as_ref()).and_then(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llmsim-bare-hyper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first exchange's answer, as replayd sends it.
fn answer(dir: &std::path::Path) -> Result<Answer, String> {
    let snapshot = llmsim_snapshot::store::load(dir).map_err(|e| e.to_string())?;
    let exchange = &snapshot
        .exchanges
        .first()
        .ok_or("the snapshot holds no exchange")?
        .exchange;
    let mut headers = HeaderMap::new();
    for (name, value) in end_to_end(&exchange.response.headers, &["content-length"]) {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?,
            HeaderValue::from_str(&value).map_err(|e| format!("{name}: {e}"))?,
        );
    }
    Ok(Answer {
        status: StatusCode::from_u16(exchange.response.status).map_err(|e| e.to_string())?,
        headers,
        body: Bytes::from(exchange.response.body.to_bytes()),
    })
}

fn serve(answer: Answer) -> Result<(), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    eprintln!(
        "listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let answer = Arc::new(answer);
    let threads = (0..thread::available_parallelism().map_or(1, usize::from))
        .map(|_| {
            let (queue, accepted) = mpsc::unbounded_channel();
            let answer = answer.clone();
            thread::spawn(move || serve_thread(accepted, &answer));
            queue
        })
        .collect::<Vec<_>>();
    // Handed out in turn, as replayd's acceptor hands each connection to its least busy
    // thread: threads accepting from the shared socket themselves left every connection
    // of a load generator's burst to whichever thread woke first.
    for (stream, queue) in listener.incoming().zip(threads.iter().cycle()) {
        let stream = stream.map_err(|e| e.to_string())?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        queue.send(stream).map_err(|_| "a serving thread stopped")?;
    }
    Ok(())
}

/// One serving thread: serves the connections handed to it on its own runtime, for ever.
fn serve_thread(mut accepted: mpsc::UnboundedReceiver<std::net::TcpStream>, answer: &Arc<Answer>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        while let Some(stream) = accepted.recv().await {
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                tokio::spawn(connection(stream, answer.clone()));
            }
        }
    });
}

async fn connection(stream: tokio::net::TcpStream, answer: Arc<Answer>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let answer = answer.clone();
        async move {
            let _ = request.into_body().collect().await;
            let mut response = Response::new(Full::new(answer.body.clone()));
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers.clone();
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .writev(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
