//! An HTTP/2 front end for the fake provider, as a RAII guard: `nghttpx` (Debian's
//! `nghttp2-proxy`) inside a [`TestNetns`], serving TLS with the [`TestCa`] leaf on port
//! [`H2_PORT`] of `127.0.0.1` and `::1` with ALPN `h2` and `http/1.1`, and forwarding every
//! stream to the fake provider on `127.0.0.1:443` (TLS, HTTP/1.1). A client in the namespace
//! reaches it under the provider's real host name, at [`H2Front::origin`]; curl and httpx
//! then speak HTTP/2 to it because ALPN chose it. Killed on drop.
//!
//! The same front end can stand before a real gRPC server instead ([`GrpcServer`]: the
//! Python `grpcio` package, `tests/clients/grpc_server.py`, plain HTTP/2 on [`GRPC_SERVER_PORT`]), so that a
//! gRPC client that goes through the system libssl reaches it under the same host name.
//!
//! Also an HTTP/2 server of its own (`tests/clients/h2_server.py`) in a namespace, on
//! [`H2_SERVER_PORT`] of `localhost`: an echo of every request, for captures of many streams
//! on one connection.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use crate::ca::TestCa;
use crate::netns::TestNetns;
use crate::paths::client_script;
use crate::process::{ChildGuard, Lines};
use crate::provider::{FakeProvider, FakeProviderConfig};

/// Whether `program` is on `PATH`: the HTTP/2 tests need `nghttpx` and `h2load`, which
/// `scripts/setup.sh` installs (Debian's `nghttp2-proxy` and `nghttp2-client`).
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The port the front end listens on inside the namespace (the fake provider has 443).
pub const H2_PORT: u16 = 8443;

/// The HTTP/2 server's port inside the namespace.
pub const H2_SERVER_PORT: u16 = 50051;

/// The gRPC server's port inside the namespace.
pub const GRPC_SERVER_PORT: u16 = 50052;

/// How long nghttpx or the HTTP/2 server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running nghttpx; killed on drop.
pub struct H2Front {
    // Declared first so it is killed before its log reader is dropped.
    _child: ChildGuard,
    _log: Lines,
}

impl H2Front {
    /// Starts nghttpx in `netns` in front of a [`crate::FakeProvider`] started there, and
    /// waits until its worker accepts connections.
    pub fn start(netns: &TestNetns, ca: &TestCa) -> Self {
        // The provider's certificate is the test leaf; the front end need not check it.
        Self::with_backend(netns, ca, "127.0.0.1,443;;tls;sni=api.openai.com")
    }

    /// Starts nghttpx in `netns` in front of a [`GrpcServer`] started there (plain HTTP/2,
    /// so the trailers pass through), and waits until its worker accepts connections.
    pub fn start_grpc(netns: &TestNetns, ca: &TestCa) -> Self {
        Self::with_backend(
            netns,
            ca,
            &format!("127.0.0.1,{GRPC_SERVER_PORT};;proto=h2"),
        )
    }

    /// nghttpx with one `--backend` (its `host,port;pattern;parameters` form).
    fn with_backend(netns: &TestNetns, ca: &TestCa, backend: &str) -> Self {
        let what = format!("nghttpx in network namespace {}", netns.name());
        let mut cmd = netns.command("nghttpx");
        cmd.arg("--conf=/dev/null")
            .arg(format!("--frontend=127.0.0.1,{H2_PORT}"))
            .arg(format!("--frontend=::1,{H2_PORT}"))
            .arg(format!("--backend={backend}"))
            .arg("--insecure")
            .args(["--no-ocsp", "--no-via", "--workers=1"])
            .arg("--errorlog-file=/dev/stderr")
            .arg(ca.leaf_key_path())
            .arg(ca.leaf_cert_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd, &what);
        let stderr = child.child_mut().stderr.take().expect("stderr is piped");
        let mut log = Lines::new(stderr, &what);
        log.wait_for(
            |l| l.contains("Created worker thread"),
            START_TIMEOUT,
            String::new,
        );
        H2Front {
            _child: child,
            _log: log,
        }
    }

    /// `https://api.openai.com:8443`: the `OpenAI` API through the front end.
    pub fn origin() -> String {
        format!("https://api.openai.com:{H2_PORT}")
    }
}

/// A test server script run with `python3 -u SCRIPT ARGS...` in a namespace, once it has
/// printed its `listening ...` line; killed on drop.
struct ListeningScript {
    _child: ChildGuard,
    _stdout: Lines,
}

impl ListeningScript {
    fn start(netns: &TestNetns, what: &str, script: &str, args: &[&OsStr]) -> Self {
        let what = format!("{what} in network namespace {}", netns.name());
        let mut cmd = netns.command("python3");
        cmd.arg("-u")
            .arg(client_script(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd, &what);
        let stdout = child.child_mut().stdout.take().expect("stdout is piped");
        let mut lines = Lines::new(stdout, &what);
        lines.wait_for(|l| l.starts_with("listening "), START_TIMEOUT, String::new);
        ListeningScript {
            _child: child,
            _stdout: lines,
        }
    }
}

/// A running `grpc_server.py`; killed on drop.
pub struct GrpcServer(#[expect(dead_code, reason = "held for its drop")] ListeningScript);

impl GrpcServer {
    /// Starts the gRPC server in `netns` on [`GRPC_SERVER_PORT`] and waits until it listens.
    pub fn start(netns: &TestNetns) -> Self {
        let port = GRPC_SERVER_PORT.to_string();
        GrpcServer(ListeningScript::start(
            netns,
            "gRPC server",
            "grpc_server.py",
            &[port.as_ref()],
        ))
    }
}

/// A running `h2_server.py`; killed on drop.
pub struct H2Server(#[expect(dead_code, reason = "held for its drop")] ListeningScript);

impl H2Server {
    /// Starts the server in `netns` with the `ca` leaf and waits until it listens.
    pub fn start(netns: &TestNetns, ca: &TestCa) -> Self {
        let port = H2_SERVER_PORT.to_string();
        H2Server(ListeningScript::start(
            netns,
            "HTTP/2 server",
            "h2_server.py",
            &[
                port.as_ref(),
                ca.leaf_cert_path().as_os_str(),
                ca.leaf_key_path().as_os_str(),
            ],
        ))
    }

    /// `https://localhost:50051`.
    pub fn origin() -> String {
        format!("https://localhost:{H2_SERVER_PORT}")
    }
}

/// The fake provider behind an [`H2Front`], in a namespace of its own, and the CA both
/// present: what the HTTP/2 capture tests run their clients against.
pub struct ProviderBehindH2 {
    pub ca: TestCa,
    pub netns: TestNetns,
    pub provider: FakeProvider,
    _front: H2Front,
}

impl ProviderBehindH2 {
    /// Starts the provider with its default answers, and the front end.
    pub fn start() -> Self {
        Self::start_with(&FakeProviderConfig::default())
    }

    /// Starts the provider configured by `config`, and the front end.
    pub fn start_with(config: &FakeProviderConfig) -> Self {
        let ca = TestCa::new();
        let netns = TestNetns::new();
        let provider = FakeProvider::start_with(&netns, &ca, config);
        let front = H2Front::start(&netns, &ca);
        ProviderBehindH2 {
            ca,
            netns,
            provider,
            _front: front,
        }
    }
}
