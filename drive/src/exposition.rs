//! Serving Prometheus registries as the text exposition on `GET /metrics`: the driver's
//! `--metrics`, and replayd's (which, under `--drive`, serves the driver's registry
//! beside its own on one endpoint). A source is anything that has a
//! `prometheus-client` [`Registry`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// How long the accept loop waits after an error before accepting again (a peer that
/// went away, or descriptors running out), so that it never spins.
const ACCEPT_BACK_OFF: Duration = Duration::from_millis(50);

/// Why the metrics endpoint cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot serve metrics on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The bound listener could not be handed to the runtime.
    #[error("the metrics listener failed")]
    Accept {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Something whose metrics the endpoint serves.
pub trait Exposed: Send + Sync {
    /// Its registry.
    fn registry(&self) -> &Registry;
}

/// The text exposition of `sources`, in order, with one end-of-file marker.
pub fn encode(sources: &[&dyn Exposed]) -> String {
    let mut text = String::new();
    for source in sources {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, source.registry());
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut text);
    text
}

/// Binds the metrics endpoint on `addr`.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, MetricsError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(listener)
}

/// Binds `addr` and serves `sources` there on a task of the current runtime for as long
/// as it runs; returns the bound address.
pub fn start(addr: SocketAddr, sources: Vec<Arc<dyn Exposed>>) -> Result<SocketAddr, MetricsError> {
    let listener = bind(addr)?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let listener =
        TcpListener::from_std(listener).map_err(|source| MetricsError::Accept { source })?;
    tokio::spawn(accept_loop(listener, sources));
    Ok(bound)
}

/// Serves `GET /metrics` with `sources` on `listener` until the task is dropped. An
/// accept error never ends it: the loop waits [`ACCEPT_BACK_OFF`] and accepts again.
pub async fn serve(
    listener: std::net::TcpListener,
    sources: Vec<Arc<dyn Exposed>>,
) -> Result<(), MetricsError> {
    let listener =
        TcpListener::from_std(listener).map_err(|source| MetricsError::Accept { source })?;
    accept_loop(listener, sources).await;
    Ok(())
}

async fn accept_loop(listener: TcpListener, sources: Vec<Arc<dyn Exposed>>) {
    let sources = Arc::new(sources);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACK_OFF).await;
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let sources = sources.clone();
                    async move { Ok::<_, std::convert::Infallible>(scrape(&request, &sources)) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn scrape<B>(request: &Request<B>, sources: &[Arc<dyn Exposed>]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let sources: Vec<&dyn Exposed> = sources.iter().map(AsRef::as_ref).collect();
    *response.body_mut() = Full::new(Bytes::from(encode(&sources)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
