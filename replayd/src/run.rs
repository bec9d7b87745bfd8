//! A replay run's lifetime, shared by every mode: load the snapshot into an [`Engine`]
//! ([`load_engine`]), load the CA ([`load_tls`]), bind the listeners ([`Server::bind`]) and,
//! for the redirect modes, the DNS responder ([`start_dns`]); then [`Server::start`] with
//! the redirect's original-destination lookup (none in `--listen` mode), serve the
//! Prometheus metrics if asked ([`start_metrics`]), wait for a signal
//! or the child ([`Running::run_until`]), and take the end-of-run [`Report`]
//! ([`Running::finish`], which first lets open connections close gracefully: GOAWAY on
//! HTTP/2). The kernel redirect is attached between binding and starting, because it needs
//! the bound addresses.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::task::JoinSet;

use crate::accept::{AcceptError, Acceptor, OriginalDestination, Shutdown};
use crate::ca::{self, CaError, CertificateAuthority, LeafResolver};
use crate::dns::{DnsError, DnsResponder};
use crate::engine::{Engine, EngineError};
use crate::options::ReplayOptions;
use crate::report::Report;
use crate::upstream::{Upstream, UpstreamSettings, UpstreamSetupError};
use crate::workers::Workers;
use llmsim_drive::exposition::{self, Exposed, MetricsError};

/// How long [`Running::finish`] lets open connections finish the answers under way.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How many times [`start_dns`] tries for a port free for UDP and TCP on every address.
const DNS_BIND_ATTEMPTS: usize = 16;

/// Why a run could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The snapshot could not be loaded (a file that does not parse names itself), or the
    /// engine could not be built from it.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Forwarding misses (`--on-miss passthrough|record`) could not be set up.
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    /// The replay CA could not be loaded or created.
    #[error("cannot set up the replay CA")]
    Ca(#[from] CaError),
    /// The serving threads could not be started.
    #[error("cannot start the serving threads")]
    Workers {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// No port was free for both the UDP and TCP DNS sockets.
    #[error("cannot find a port on {ip} free for both UDP and TCP DNS")]
    DnsPort {
        /// The address.
        ip: IpAddr,
        /// The last I/O error.
        #[source]
        source: io::Error,
    },
    /// Waiting for signals failed.
    #[error("cannot install signal handlers")]
    Signals {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A listener stopped accepting.
    #[error(transparent)]
    Accept(#[from] AcceptError),
    /// The DNS responder stopped.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The metrics endpoint could not be bound or stopped.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Serves the engine's metrics (`--metrics ADDR`), followed by `more` (the driver's under
/// `--drive`), on `addr` for as long as `running` runs, and returns the bound address;
/// `None` when the engine keeps no metrics.
pub fn start_metrics(
    running: &mut Running,
    addr: SocketAddr,
    more: Vec<Arc<dyn Exposed>>,
) -> Result<Option<SocketAddr>, RunError> {
    let Some(metrics) = running.engine().stats().metrics().cloned() else {
        return Ok(None);
    };
    let listener = exposition::bind(addr)?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let mut sources: Vec<Arc<dyn Exposed>> = vec![metrics];
    sources.extend(more);
    running.watch(async move { Ok(exposition::serve(listener, sources).await?) });
    Ok(Some(bound))
}

/// Loads the snapshot in `dir` and builds the engine, forwarding misses to the real hosts
/// with the system roots and built-in prices when `options.on_miss` says so.
pub fn load_engine(dir: &Path, options: ReplayOptions) -> Result<Engine, RunError> {
    load_engine_with(
        dir,
        options,
        UpstreamSettings {
            on_miss: options.on_miss,
            ..UpstreamSettings::default()
        },
    )
}

/// [`load_engine`] with the forwarding settings spelled out (`--budget`, `--prices`, and
/// in tests the roots and the address standing in for the real host).
pub fn load_engine_with(
    dir: &Path,
    options: ReplayOptions,
    upstream: UpstreamSettings,
) -> Result<Engine, RunError> {
    // First, so `--on-miss record` creates a snapshot directory that does not exist yet.
    let upstream = Upstream::new(dir, upstream)?.map(Arc::new);
    Ok(Engine::load(dir, options)?.with_upstream(upstream))
}

/// Loads (creating on first use) the CA in `ca_dir`, or the default directory, and returns
/// a leaf resolver for it.
pub fn load_tls(ca_dir: Option<&Path>) -> Result<Arc<LeafResolver>, RunError> {
    let dir: PathBuf = match ca_dir {
        Some(dir) => dir.to_owned(),
        None => ca::default_ca_dir()?,
    };
    let authority = CertificateAuthority::load_or_create(&dir)?;
    Ok(Arc::new(LeafResolver::new(Arc::new(authority))?))
}

/// An address to listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    /// The address; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Whether failing to bind it stops start-up; otherwise it is skipped with a warning
    /// (`[::1]` on a host without IPv6).
    pub required: bool,
}

impl ListenAddr {
    /// An address that must be bound.
    pub fn required(addr: SocketAddr) -> Self {
        Self {
            addr,
            required: true,
        }
    }

    /// The redirect modes' default: `127.0.0.1:0`, and `[::1]:0` when IPv6 works.
    pub fn loopback_defaults() -> Vec<Self> {
        vec![
            Self::required(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
            Self {
                addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
                required: false,
            },
        ]
    }
}

/// Bound listeners, not yet serving, and the threads that will serve their connections.
#[derive(Debug)]
pub struct Server {
    engine: Arc<Engine>,
    tls: Option<Arc<LeafResolver>>,
    listeners: Vec<(SocketAddr, TcpListener)>,
    workers: Workers,
}

impl Server {
    /// Binds `addrs` and starts one serving thread per core. With `tls`, connections that
    /// start a TLS handshake get one. Call it inside a Tokio runtime.
    pub fn bind(
        engine: Arc<Engine>,
        tls: Option<Arc<LeafResolver>>,
        addrs: &[ListenAddr],
    ) -> Result<Self, RunError> {
        let mut listeners = Vec::with_capacity(addrs.len());
        for wanted in addrs {
            match bind_tcp(wanted.addr) {
                Ok(listener) => {
                    let bound = listener.local_addr().map_err(|source| RunError::Bind {
                        addr: wanted.addr,
                        source,
                    })?;
                    listeners.push((bound, listener));
                }
                Err(source) if wanted.required => {
                    return Err(RunError::Bind {
                        addr: wanted.addr,
                        source,
                    });
                }
                Err(e) => {
                    tracing::warn!(addr = %wanted.addr, error = %e, "not listening on this address");
                }
            }
        }
        let workers = Workers::per_core().map_err(|source| RunError::Workers { source })?;
        Ok(Self {
            engine,
            tls,
            listeners,
            workers,
        })
    }

    /// The bound addresses, in the order asked for.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(addr, _)| *addr).collect()
    }

    /// The first bound IPv4 address: where the connect4 hook sends the target.
    pub fn local_v4(&self) -> Option<SocketAddr> {
        self.local_addrs().into_iter().find(SocketAddr::is_ipv4)
    }

    /// The first bound IPv6 address: where the connect6 hook sends the target.
    pub fn local_v6(&self) -> Option<SocketAddr> {
        self.local_addrs().into_iter().find(SocketAddr::is_ipv6)
    }

    /// The engine served.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Starts serving; `original_destination` comes from the kernel redirect, if any.
    pub fn start(self, original_destination: Option<Arc<dyn OriginalDestination>>) -> Running {
        let shutdown = Shutdown::default();
        let mut acceptor =
            Acceptor::new(self.engine.clone(), self.workers.handle()).with_shutdown(&shutdown);
        if let Some(resolver) = self.tls {
            acceptor = acceptor.with_tls(resolver);
        }
        if let Some(lookup) = original_destination {
            acceptor = acceptor.with_original_destination(lookup);
        }
        let mut tasks = JoinSet::new();
        for (_, listener) in self.listeners {
            let acceptor = acceptor.clone();
            tasks.spawn(async move { acceptor.serve(listener).await.map_err(RunError::from) });
        }
        Running {
            engine: self.engine,
            tasks,
            shutdown,
            workers: self.workers,
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A serving run.
#[derive(Debug)]
pub struct Running {
    engine: Arc<Engine>,
    tasks: JoinSet<Result<(), RunError>>,
    shutdown: Shutdown,
    /// Kept until the run ends: the connections live on these threads.
    workers: Workers,
}

impl Running {
    /// The engine served.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Adds a task whose failure should stop the run (the DNS responder).
    pub fn watch(&mut self, task: impl Future<Output = Result<(), RunError>> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Serves until `until` completes (a signal, the child exiting) and returns its
    /// output, or returns the error of a listener or watched task that stopped first.
    pub async fn run_until<F: Future>(&mut self, until: F) -> Result<F::Output, RunError> {
        tokio::pin!(until);
        loop {
            tokio::select! {
                output = &mut until => return Ok(output),
                Some(done) = self.tasks.join_next() => match done {
                    Ok(Err(e)) => return Err(e),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Ok(Ok(())) | Err(_) => {}
                },
            }
        }
    }

    /// The statistics so far.
    pub fn report(&self) -> Report {
        self.engine.stats().report()
    }

    /// Stops accepting, closes open connections gracefully (HTTP/2 ones get GOAWAY), waits
    /// up to [`SHUTDOWN_GRACE`] for the answers under way, and returns the end-of-run report.
    pub async fn finish(mut self) -> Report {
        self.shutdown.begin();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.shutdown.closed()).await;
        self.tasks.abort_all();
        // The connections still open after the grace period close with their threads.
        drop(self.workers);
        self.engine.stats().report()
    }
}

/// The signal that ended a daemon run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// Installs SIGINT and SIGTERM handlers now and returns a future that resolves at the
/// first of them.
pub fn shutdown_signal() -> Result<impl Future<Output = Signal>, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|source| RunError::Signals { source })?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|source| RunError::Signals { source })?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => Signal::Interrupt,
            _ = terminate.recv() => Signal::Terminate,
        }
    })
}

/// A DNS responder bound for both UDP and TCP on each of its addresses, one port for all.
#[derive(Debug)]
pub struct DnsServer {
    /// The responder, for its statistics.
    pub responder: Arc<DnsResponder>,
    sockets: Vec<(SocketAddr, UdpSocket, TcpListener)>,
}

impl DnsServer {
    /// The first bound IPv4 address: where the hooks send DNS to IPv4 nameservers.
    pub fn local_v4(&self) -> Option<SocketAddr> {
        self.sockets.iter().map(|s| s.0).find(SocketAddr::is_ipv4)
    }

    /// The first bound IPv6 address: where the hooks send DNS to IPv6 nameservers.
    pub fn local_v6(&self) -> Option<SocketAddr> {
        self.sockets.iter().map(|s| s.0).find(SocketAddr::is_ipv6)
    }

    /// The future serving every address and transport; give it to [`Running::watch`].
    pub async fn serve(self) -> Result<(), RunError> {
        let mut tasks = JoinSet::new();
        for (_, udp, tcp) in self.sockets {
            tasks.spawn(self.responder.clone().serve_udp(udp));
            tasks.spawn(self.responder.clone().serve_tcp(tcp));
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Err(e)) => return Err(e.into()),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Ok(())) | Err(_) => {}
            }
        }
        Ok(())
    }
}

/// Binds `responder` for UDP and TCP on each of `addrs`, all on one port free for both
/// transports on every address (the redirect sends both transports of port 53 to one
/// address per family); the ports in `addrs` are not used. An address that is not
/// `required` and cannot be bound (`[::1]` on a host without IPv6) is skipped with a warning.
pub async fn start_dns(
    addrs: &[ListenAddr],
    responder: DnsResponder,
) -> Result<DnsServer, RunError> {
    let mut attempts = 1;
    'attempt: loop {
        let mut port = 0;
        let mut sockets = Vec::with_capacity(addrs.len());
        for wanted in addrs {
            let ip = wanted.addr.ip();
            match bind_dns(SocketAddr::new(ip, port)).await {
                Ok((addr, udp, tcp)) => {
                    port = addr.port();
                    sockets.push((addr, udp, tcp));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts < DNS_BIND_ATTEMPTS => {
                    attempts += 1;
                    continue 'attempt;
                }
                Err(source) if wanted.required => return Err(RunError::DnsPort { ip, source }),
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "no DNS responder on this address");
                }
            }
        }
        return Ok(DnsServer {
            responder: Arc::new(responder),
            sockets,
        });
    }
}

/// A UDP socket on `addr` and a TCP listener on the same address and port.
async fn bind_dns(addr: SocketAddr) -> io::Result<(SocketAddr, UdpSocket, TcpListener)> {
    let udp = UdpSocket::bind(addr).await?;
    let addr = udp.local_addr()?;
    let tcp = TcpListener::bind(addr).await?;
    Ok((addr, udp, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{Fallback, HostAnswers};
    use crate::testutil::{exchange, snapshot};
    use std::error::Error as _;

    #[test]
    fn a_bad_budget_is_refused_at_start_up() {
        let dir = snapshot(&[]);
        for budget in [-1.0, f64::NAN, f64::INFINITY] {
            let err = load_engine_with(
                dir.path(),
                ReplayOptions::default(),
                UpstreamSettings {
                    on_miss: crate::options::OnMiss::Passthrough,
                    budget_usd: Some(budget),
                    ..UpstreamSettings::default()
                },
            )
            .unwrap_err();
            assert!(err.to_string().contains("--budget"), "{err}");
        }
    }

    #[test]
    fn a_broken_file_is_named_with_its_reason() {
        let dir = snapshot(&[exchange("hi", serde_json::json!({}))]);
        let file = dir
            .path()
            .join("exchanges/000001-openai-post-v1-chat-completions.json");
        std::fs::write(&file, "{\"format_version\": 1, \"seq\": }").unwrap();
        let err = load_engine(dir.path(), ReplayOptions::default()).unwrap_err();
        assert!(err.to_string().contains("000001-openai"), "{err}");
        assert!(
            err.source().unwrap().to_string().contains("line 1"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn binds_listeners_and_dns() {
        let dir = snapshot(&[]);
        let engine = Arc::new(load_engine(dir.path(), ReplayOptions::default()).unwrap());
        let server = Server::bind(engine, None, &ListenAddr::loopback_defaults()).unwrap();
        assert!(server.local_v4().unwrap().port() != 0);
        let mut running = server.start(None);
        let dns = start_dns(
            &ListenAddr::loopback_defaults(),
            DnsResponder::new(HostAnswers::new(), Fallback::NxDomain),
        )
        .await
        .unwrap();
        let port = dns.local_v4().unwrap().port();
        assert_ne!(port, 0);
        if let Some(v6) = dns.local_v6() {
            assert_eq!(v6.port(), port, "one port for every DNS address");
        }
        running.watch(dns.serve());
        let out = running.run_until(async { 7 }).await.unwrap();
        assert_eq!(out, 7);
        assert_eq!(running.finish().await.total_served, 0);
    }
}
