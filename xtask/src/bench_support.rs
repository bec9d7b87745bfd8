//! What the benchmarks share: finding and installing their tools, building
//! the binaries they measure, `replayd --listen` and nginx as the servers they
//! measure, child processes that never outlive a run, idle CPUs kept polling,
//! medians and quantiles.

use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use llmsim_tests::{TestCa, paths::repo_root};

/// How long a server may take to start listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a child may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The median; NaN for no values.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

/// Each round's ratio listed (`0.912x, 0.781x`) and whether `target` is met, which it is only
/// when every round meets it (`met in every round`, or `NOT met (3 of 5 rounds)`).
pub fn every_round(ratios: &[f64], target: f64) -> (String, String) {
    let met = ratios.iter().filter(|r| **r >= target).count();
    let verdict = if met == ratios.len() {
        "met in every round".to_owned()
    } else {
        format!("NOT met ({met} of {} rounds)", ratios.len())
    };
    (list_ratios(ratios), verdict)
}

/// Ratios listed as a report prints them: `0.912x, 0.781x`.
pub fn list_ratios(ratios: &[f64]) -> String {
    // Three decimals: a round just under a target must not print as meeting it.
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.3}x")).collect();
    listed.join(", ")
}

/// The `q` quantile (0 to 1) of `sorted`, which is sorted and not empty: the value that
/// a share `q` of the values lie below.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "sample counts, far below 2^52"
    )]
    let at = (q * sorted.len() as f64) as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace) or `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// The release binary `bin` of `package`, built first unless `build` is false.
pub fn release_binary(package: &str, bin: &str, build: bool) -> anyhow::Result<PathBuf> {
    if build {
        let args = ["build", "--release", "-p", package];
        eprintln!("xtask: cargo {}", args.join(" "));
        let status = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(repo_root())
            .status()
            .with_context(|| format!("running cargo build --release -p {package}"))?;
        ensure!(
            status.success(),
            "cargo build --release -p {package} failed ({status})"
        );
    }
    let path = target_dir().join("release").join(bin);
    ensure!(
        path.is_file(),
        "{} is missing (build it with `cargo build --release -p {package}`)",
        path.display()
    );
    Ok(path)
}

/// Runs a load generator to the end and returns its stdout; a failure is the
/// error, with everything it printed.
pub fn report_of(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "{what} failed ({}):\n{text}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(text)
}

/// `name` on PATH, in /usr/sbin (where Debian puts nginx, often off a user's PATH), or in
/// cargo's bin directory (where `cargo install` puts oha).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The paths of `names`, running `scripts/setup.sh --bench` (which installs the benchmarks'
/// tools, each at its pinned version) when one is missing.
pub fn bench_tools<const N: usize>(names: [&str; N]) -> anyhow::Result<[PathBuf; N]> {
    if names.iter().any(|name| find_program(name).is_none()) {
        let setup = repo_root().join("scripts/setup.sh");
        eprintln!("xtask: {} --bench", setup.display());
        let status = Command::new(&setup)
            .arg("--bench")
            .status()
            .with_context(|| format!("running {}", setup.display()))?;
        ensure!(
            status.success(),
            "`{} --bench` failed ({status}); it installs wrk and nginx (with apt-get, as root) \
             and oha (with cargo install)",
            setup.display()
        );
    }
    let found = names.map(find_program);
    let missing: Vec<&str> = names
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    ensure!(
        missing.is_empty(),
        "{} still not found after `scripts/setup.sh --bench`",
        missing.join(" and ")
    );
    Ok(found.map(Option::unwrap_or_default))
}

/// True when running as root (the capture benchmark attaches eBPF probes).
pub fn is_root() -> anyhow::Result<bool> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    Ok(uid == "0")
}

/// Idle CPUs poll instead of halting for as long as this is held: a CPU
/// latency limit of 0 us written to `/dev/cpu_dma_latency`, which the kernel
/// lifts when the file closes. On a virtual machine a halted vCPU is woken
/// through the hypervisor, and a request loop whose client and server take
/// turns on two CPUs wakes one at each turn: on the machines this is measured
/// on (guest halt polling off), curl's HTTPS loop against nginx takes 85-105
/// us a request with halting and 28-30 us with polling. Halting also makes the
/// loop depend on what else keeps a CPU awake: the agent's own activity made a
/// capture run faster than the run without it.
pub struct IdlePolling {
    _request: File,
}

impl IdlePolling {
    /// Holds the request; what to say in a report when it cannot be made.
    pub fn hold() -> Result<Self, String> {
        const PATH: &str = "/dev/cpu_dma_latency";
        let mut request = OpenOptions::new()
            .write(true)
            .open(PATH)
            .map_err(|e| format!("{PATH}: {e}"))?;
        request
            .write_all(&0i32.to_ne_bytes())
            .map_err(|e| format!("{PATH}: {e}"))?;
        Ok(Self { _request: request })
    }
}

/// A child stopped on drop (SIGTERM, then SIGKILL after a grace period, so nginx's master
/// takes its workers with it), with its captured stderr for error messages.
pub struct Guard {
    child: Child,
    what: &'static str,
    log: Arc<Mutex<String>>,
}

impl Guard {
    /// Takes over `child`, whose stderr, if piped, is collected from now on.
    pub fn new(mut child: Child, what: &'static str) -> Self {
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&log);
            thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut chunk = [0u8; 4096];
                while let Ok(n) = reader.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut log) = sink.lock() {
                        log.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    }
                }
            });
        }
        Self { child, what, log }
    }

    /// What the child printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Starts `command` (stdin and stdout null, stderr collected) and waits for the stderr
    /// line that starts with `prefix` and gives the address it listens on.
    pub fn listening(
        command: &mut Command,
        what: &'static str,
        prefix: &str,
    ) -> anyhow::Result<(Self, SocketAddr)> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let mut guard = Self::new(child, what);
        let addr = guard
            .wait_for_line(|line| line.strip_prefix(prefix).map(|addr| addr.trim().to_owned()))?;
        let addr = addr
            .parse()
            .with_context(|| format!("{what}'s listening address `{addr}`"))?;
        Ok((guard, addr))
    }

    /// The first stderr line (so far or within [`READY_TIMEOUT`]) that `ready` makes
    /// something of; an error if the child exits first or the time runs out.
    pub fn wait_for_line<T>(&mut self, ready: impl Fn(&str) -> Option<T>) -> anyhow::Result<T> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Only whole lines: the last one may still be arriving.
            let log = self.log();
            let whole = log.rsplit_once('\n').map_or("", |(lines, _)| lines);
            if let Some(found) = whole.lines().find_map(&ready) {
                return Ok(found);
            }
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "{} printed no line it is ready within {READY_TIMEOUT:?}; it printed:\n{log}",
                self.what
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// An error if the child has exited, with what it printed.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("polling a child")? {
            bail!(
                "{} exited ({status}); it printed:\n{}",
                self.what,
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// nginx answering every request with one body from memory, plain, over TLS, and over HTTP/2
/// on TLS, on three free loopback ports; stopped on drop.
pub struct Nginx {
    /// The process.
    pub child: Guard,
    /// The plain HTTP listener.
    pub http: SocketAddr,
    /// The TLS listener (the test CA's leaf certificate).
    pub https: SocketAddr,
    /// The TLS listener that offers HTTP/2 by ALPN.
    pub h2: SocketAddr,
    /// Files put here are served under `/files/` (from disk, for answers too large to hold
    /// in nginx.conf).
    pub files: PathBuf,
}

impl Nginx {
    /// Starts nginx in the foreground under `scratch/nginx`, one worker per core, and waits
    /// until both ports accept.
    pub fn start(bin: &Path, scratch: &Path, body: &[u8], ca: &TestCa) -> anyhow::Result<Self> {
        Self::launch(bin, scratch, body, &[], ca, None)
    }

    /// Like [`Nginx::start`]; with `cpu`, one worker pinned to that CPU
    /// (`worker_cpu_affinity`), so a client pinned elsewhere never shares its core.
    pub fn start_on(
        bin: &Path,
        scratch: &Path,
        body: &[u8],
        ca: &TestCa,
        cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        Self::launch(bin, scratch, body, &[], ca, cpu)
    }

    /// Like [`Nginx::start`], the answer carrying `headers` too, besides nginx's own
    /// `Server`, `Date`, `Content-Type` and `Content-Length`.
    pub fn start_answering(
        bin: &Path,
        scratch: &Path,
        body: &[u8],
        headers: &[(String, String)],
        ca: &TestCa,
    ) -> anyhow::Result<Self> {
        Self::launch(bin, scratch, body, headers, ca, None)
    }

    fn launch(
        bin: &Path,
        scratch: &Path,
        body: &[u8],
        headers: &[(String, String)],
        ca: &TestCa,
        cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        let dir = scratch.join("nginx");
        std::fs::create_dir_all(dir.join("files"))
            .with_context(|| format!("creating {}/files", dir.display()))?;
        let http = free_port()?;
        let https = free_port()?;
        let h2 = free_port()?;
        let body = std::str::from_utf8(body).context("the answer is UTF-8")?;
        ensure!(
            !body.contains(['\'', '\\', '$']),
            "the answer cannot be quoted in nginx.conf"
        );
        let add_headers = add_header_lines(headers)?;
        let d = dir.display();
        // The answer is returned from memory (`return`), nginx's cheapest path, so the
        // comparison is with the best nginx can do; worker_processes auto is one per core.
        // Each listener is `reuseport`, so the kernel splits the connections between the
        // workers, about evenly, as replayd's acceptor does. Without it each worker took
        // whatever it woke first for, and the more of a load generator's 64 connections one
        // worker held, the faster nginx ran on two cores (by hand: 177k req/s with 56 of
        // them, 140-159k with even splits; one benchmark round at 228k against 155-166k),
        // which moved the comparison by chance.
        let workers = match cpu {
            Some(cpu) => format!(
                "worker_processes 1;\nworker_cpu_affinity {mask:b};",
                mask = 1u64 << cpu
            ),
            None => "worker_processes auto;".to_owned(),
        };
        let conf = format!(
            r"{workers}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server_tokens off;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{
        listen 127.0.0.1:{http} reuseport;
        listen 127.0.0.1:{https} ssl reuseport;
        listen 127.0.0.1:{h2} ssl http2 reuseport;
        location / {{
            default_type application/json;
            {add_headers}return 200 '{body}';
        }}
        location /files/ {{
            root {d};
        }}
    }}
}}
",
            cert = ca.leaf_cert_path().display(),
            key = ca.leaf_key_path().display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut guard = Guard::new(child, "nginx");
        let (http, https, h2) = (
            SocketAddr::from((Ipv4Addr::LOCALHOST, http)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, https)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, h2)),
        );
        for addr in [http, https, h2] {
            let deadline = Instant::now() + READY_TIMEOUT;
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Err(e) = guard.check_alive() {
                    let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                    return Err(e.context(format!("nginx failed to start; error.log:\n{errors}")));
                }
                ensure!(
                    Instant::now() < deadline,
                    "nginx did not listen on {addr} within {READY_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Self {
            child: guard,
            http,
            https,
            h2,
            files: dir.join("files"),
        })
    }
}

/// nginx.conf's `add_header` lines for `headers`, each followed by the indentation of the
/// next line.
fn add_header_lines(headers: &[(String, String)]) -> anyhow::Result<String> {
    let mut lines = String::new();
    for (name, value) in headers {
        ensure!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !value.contains(['"', '\\', '$']),
            "the header {name}: {value} cannot be quoted in nginx.conf"
        );
        let _ = write!(lines, "add_header {name} \"{value}\" always;\n            ");
    }
    Ok(lines)
}

/// `replayd --listen` on an ephemeral loopback port, stopped on drop.
pub struct Replayd {
    pub child: Guard,
    pub addr: SocketAddr,
}

impl Replayd {
    /// Starts replayd serving `snapshot` with `--pace pace`, its CA in `ca_dir`, and waits
    /// for its `listening on` line.
    pub fn start(bin: &Path, snapshot: &Path, ca_dir: &Path, pace: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(bin);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--in")
            .arg(snapshot)
            .args(["--pace", pace])
            .arg("--ca-dir")
            .arg(ca_dir);
        let (child, addr) = Guard::listening(&mut command, "replayd", "replayd: listening on ")?;
        Ok(Replayd { child, addr })
    }
}
