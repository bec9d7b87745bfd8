//! `cargo xtask bench capture [REQUESTS] [PAIRS]`: what attaching the agent
//! costs a TLS client. A keep-alive HTTPS loop (curl, URL globbing: REQUESTS
//! requests over one connection through the system `libssl.so.3`) fetches a
//! 1 KiB JSON body from a local nginx, alternately without the agent and under
//! it three ways: `--pid` with the host filter dropping every exchange
//! (127.0.0.1 is not a provider: uprobes, ring buffer and reassembly, no
//! files; the breakpoints are in curl only), `--cgroup` with the same filter
//! (breakpoints in every process that maps libssl, nginx included, as for a
//! command or a cgroup whose processes start later), and `--pid --any-host`
//! (every exchange also written to disk). The client waits on stdin until the
//! agent is attached, so every run times the same loop. Reports the median
//! requests per second of each, the ratio to the baseline, and the added time
//! per request and per `SSL_*` call.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use llmsim_tests::{TestCa, TestCgroup, repo_root};

const DEFAULT_REQUESTS: u32 = 5000;
const DEFAULT_PAIRS: u32 = 3;
/// Each request is one `SSL_write` (the request) and, for a 1 KiB response
/// arriving in one TLS record, one `SSL_read`; the agent does not count calls,
/// so this is an estimate.
const SSL_CALLS_PER_REQUEST: f64 = 2.0;
const BODY_BYTES: usize = 1024;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Baseline,
    Pid,
    Cgroup,
    PidAnyHost,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Baseline, Mode::Pid, Mode::Cgroup, Mode::PidAnyHost];

    fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline (no agent)",
            Mode::Pid => "--pid, host filtered (no files)",
            Mode::Cgroup => "--cgroup, host filtered (no files)",
            Mode::PidAnyHost => "--pid --any-host (files written)",
        }
    }
}

/// One timed client run.
struct Sample {
    requests_per_second: f64,
    /// From the agent's JSON summary, when attached.
    summary: Option<AgentSummary>,
}

#[derive(Default)]
struct AgentSummary {
    written: u64,
    ignored: u64,
    dropped: u64,
    plaintext_bytes: u64,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let requests = parse_arg(args.first(), DEFAULT_REQUESTS, "REQUESTS")?;
    let pairs = parse_arg(args.get(1), DEFAULT_PAIRS, "PAIRS")?;
    ensure!(
        args.len() <= 2,
        "usage: cargo xtask bench capture [REQUESTS] [PAIRS]"
    );
    ensure!(
        is_root()?,
        "the capture benchmark attaches eBPF probes: run it as root (sudo -E cargo xtask bench capture)"
    );
    let curl = find_tool("curl").context(
        "curl not found: install it (apt-get install -y curl); it is the OpenSSL client loop",
    )?;
    let nginx = match find_tool("nginx") {
        Some(path) => path,
        None => install_nginx()?,
    };

    crate_build_agent()?;
    let agent = target_dir().join("release/llmsim-agent");
    ensure!(
        agent.is_file(),
        "{} missing after the build",
        agent.display()
    );

    let ca = TestCa::new();
    let work = ca.dir().to_path_buf();
    let server = Nginx::start(&nginx, &work, &ca)?;
    let url = format!("https://127.0.0.1:{}/x?i=[1-{requests}]", server.port);
    let client = Client {
        curl,
        url,
        work: work.clone(),
        requests,
    };

    println!(
        "capture overhead: {requests} keep-alive HTTPS requests per run (curl -> libssl.so.3 -> nginx, \
         {BODY_BYTES}-byte body, loopback), {pairs} rounds of {} alternating runs\n",
        Mode::ALL.len()
    );
    // Warm-up: page cache, nginx worker, CPU frequency.
    client.run(&agent, Mode::Baseline, requests / 5 + 1)?;

    let mut samples: Vec<Vec<Sample>> = Mode::ALL.iter().map(|_| Vec::new()).collect();
    for round in 1..=pairs {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let sample = client.run(&agent, mode, requests)?;
            let mut line = format!(
                "round {round}  {:<34} {:>9.0} req/s",
                mode.label(),
                sample.requests_per_second
            );
            if let Some(s) = &sample.summary {
                let _ = write!(
                    line,
                    "  (agent: {} written, {} ignored, {} events dropped, {} plaintext bytes)",
                    s.written, s.ignored, s.dropped, s.plaintext_bytes
                );
            }
            println!("{line}");
            samples[i].push(sample);
        }
    }
    drop(server);
    report(&samples);
    per_call_cost(&agent, pairs)
}

/// `SSL_read_ex` calls per per-call run.
const PER_CALL_CALLS: u32 = 100_000;

/// Python's `ssl` module reading from an empty memory BIO: each `read` is one
/// `SSL_read_ex` through the system libssl that returns at once (want read),
/// with no network and no other process involved. Waits for a line on stdin,
/// then prints microseconds per call.
const PER_CALL_SCRIPT: &str = r"
import ssl, sys, time
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
calls = int(sys.argv[1])
sys.stdin.readline()
start = time.perf_counter()
for _ in range(calls):
    try:
        tls.read(1)
    except ssl.SSLWantReadError:
        pass
print((time.perf_counter() - start) / calls * 1e6)
";

/// The price of one probed `SSL_*` call on its own: the same tight loop of
/// `SSL_read_ex` calls without the agent and under `--pid`, alternating.
fn per_call_cost(agent: &Path, rounds: u32) -> anyhow::Result<()> {
    println!(
        "\nper-call cost: {PER_CALL_CALLS} SSL_read_ex calls on a memory BIO (python3 ssl), \
         {rounds} rounds of 2 alternating runs"
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..rounds {
        without.push(per_call_run(None)?);
        with.push(per_call_run(Some(agent))?);
    }
    let (without, with) = (median(without), median(with));
    println!(
        "  without the agent {without:>8.2} us/call\n  under --pid       {with:>8.2} us/call  \
         (+{:.2} us per probed call: breakpoint trap, stepping the displaced \
         instruction, return probe, eBPF)",
        with - without
    );
    Ok(())
}

fn per_call_run(agent: Option<&Path>) -> anyhow::Result<f64> {
    let mut client = Command::new("python3")
        .args(["-c", PER_CALL_SCRIPT, &PER_CALL_CALLS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting python3")?;
    let out = std::env::temp_dir().join(format!("llmsim-bench-per-call-{}", std::process::id()));
    let agent = agent
        .map(|agent| {
            let args: Vec<std::ffi::OsString> = vec![
                "capture".into(),
                "--json".into(),
                "--out".into(),
                out.clone().into_os_string(),
                "--pid".into(),
                client.id().to_string().into(),
            ];
            RunningAgent::start(agent, &args)
        })
        .transpose()?;
    client
        .stdin
        .take()
        .context("python stdin")?
        .write_all(b"go\n")
        .context("starting the loop")?;
    let output = client.wait_with_output().context("waiting for python3")?;
    if let Some(agent) = agent {
        agent.finish()?;
    }
    let _ = fs::remove_dir_all(&out);
    ensure!(
        output.status.success(),
        "the per-call loop failed ({})",
        output.status
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("reading the per-call figure")
}

/// The medians, ratios and added costs, with a warning for runs that lost events.
fn report(samples: &[Vec<Sample>]) {
    let medians: Vec<f64> = samples
        .iter()
        .map(|runs| median(runs.iter().map(|s| s.requests_per_second).collect()))
        .collect();
    let base = medians[0];
    println!(
        "\n{:<34} {:>10} {:>14} {:>14} {:>15}",
        "median of each", "req/s", "x slower", "+us/request", "+us/SSL call*"
    );
    for (mode, rps) in Mode::ALL.into_iter().zip(&medians) {
        let added_us = (1.0 / rps - 1.0 / base) * 1e6;
        println!(
            "{:<34} {:>10.0} {:>13.3}x {:>14.2} {:>15.2}",
            mode.label(),
            rps,
            base / rps,
            added_us,
            added_us / SSL_CALLS_PER_REQUEST
        );
    }
    for (mode, runs) in Mode::ALL.into_iter().zip(samples) {
        let dropped: u64 = runs
            .iter()
            .filter_map(|s| s.summary.as_ref())
            .map(|s| s.dropped)
            .sum();
        if dropped > 0 {
            println!(
                "warning: {}: {dropped} kernel events dropped across its runs; those bytes were \
                 never processed, so its figure understates the cost",
                mode.label()
            );
        }
    }
    println!(
        "* estimated {SSL_CALLS_PER_REQUEST} SSL calls per request (one SSL_write, one SSL_read); \
         the agent does not count calls\ntarget: at most 1.10x slower"
    );
}

fn parse_arg(arg: Option<&String>, default: u32, name: &str) -> anyhow::Result<u32> {
    match arg {
        None => Ok(default),
        Some(text) => {
            let n: u32 = text
                .parse()
                .with_context(|| format!("{name} must be a positive integer, not `{text}`"))?;
            ensure!(n > 0, "{name} must be positive");
            Ok(n)
        }
    }
}

fn is_root() -> anyhow::Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    Ok(uid == "0")
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn install_nginx() -> anyhow::Result<PathBuf> {
    eprintln!("xtask: nginx not found; apt-get install -y nginx");
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "nginx"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context(
            "nginx is missing and apt-get could not run: install nginx (apt-get install -y nginx)",
        )?;
    ensure!(
        status.success(),
        "apt-get install -y nginx failed ({status}); install nginx and run again"
    );
    find_tool("nginx").context("nginx still not found after apt-get install")
}

fn crate_build_agent() -> anyhow::Result<()> {
    let args = ["build", "--release", "-p", "agent"];
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(repo_root())
        .status()
        .context("running cargo build --release -p agent")?;
    ensure!(
        status.success(),
        "cargo build --release -p agent failed ({status})"
    );
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// nginx serving the body over TLS on a loopback port; stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(nginx: &Path, work: &Path, ca: &TestCa) -> anyhow::Result<Self> {
        let www = work.join("www");
        fs::create_dir_all(&www).context("creating the nginx document root")?;
        fs::write(www.join("body.json"), body()).context("writing the body")?;
        // Free port: bind to :0, read it, release it for nginx.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("finding a free loopback port")?
            .port();
        let w = work.display();
        let conf = format!(
            "user root;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {w}/body-temp;
    proxy_temp_path {w}/proxy-temp;
    fastcgi_temp_path {w}/fastcgi-temp;
    uwsgi_temp_path {w}/uwsgi-temp;
    scgi_temp_path {w}/scgi-temp;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {www};
        default_type application/json;
        location / {{ try_files /body.json =404; }}
    }}
}}
",
            cert = ca.leaf_cert_path().display(),
            key = ca.leaf_key_path().display(),
            www = www.display(),
        );
        let conf_path = work.join("nginx.conf");
        fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(work)
            .arg("-e")
            .arg(work.join("nginx-error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("waiting for nginx")? {
                let log = fs::read_to_string(work.join("nginx-error.log")).unwrap_or_default();
                bail!("nginx exited before listening ({status}):\n{log}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nginx did not listen on {addr} within {READY_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { child, port })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A 1 KiB JSON object.
fn body() -> String {
    let head = "{\"id\":\"bench\",\"text\":\"";
    let tail = "\"}\n";
    let fill = BODY_BYTES - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(fill))
}

struct Client {
    curl: PathBuf,
    url: String,
    work: PathBuf,
    requests: u32,
}

impl Client {
    /// One loop of `requests` requests in `mode`. The client (a shell that
    /// becomes curl) waits for a line on stdin, sent once the agent says it is
    /// capturing; the clock runs from that line to curl's exit, so the agent's
    /// start-up and shutdown are outside the figure.
    fn run(&self, agent: &Path, mode: Mode, requests: u32) -> anyhow::Result<Sample> {
        let url = self.url.replace(
            &format!("[1-{}]", self.requests),
            &format!("[1-{requests}]"),
        );
        let client_argv: Vec<std::ffi::OsString> = vec![
            "sh".into(),
            "-c".into(),
            r#"read go && exec "$@""#.into(),
            "bench".into(),
            self.curl.clone().into_os_string(),
            "--http1.1".into(),
            "--insecure".into(),
            "--silent".into(),
            "--output".into(),
            "/dev/null".into(),
            "--write-out".into(),
            "%{http_code} %{num_connects}\n".into(),
            url.into(),
        ];
        let cgroup = (mode == Mode::Cgroup).then(TestCgroup::new);
        let mut command = if let Some(cgroup) = &cgroup {
            cgroup.command(&client_argv)
        } else {
            let mut command = Command::new(&client_argv[0]);
            command.args(&client_argv[1..]);
            command
        };
        let codes_file = self.work.join("codes");
        let mut client = command
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&codes_file).context("creating the codes file")?)
            .spawn()
            .context("starting the curl loop")?;
        let out_dir = self.work.join("capture");
        let _ = fs::remove_dir_all(&out_dir);
        let mut agent_args: Vec<std::ffi::OsString> = vec![
            "capture".into(),
            "--json".into(),
            "--out".into(),
            out_dir.clone().into_os_string(),
        ];
        if mode == Mode::PidAnyHost {
            agent_args.push("--any-host".into());
        }
        match &cgroup {
            Some(cgroup) => agent_args.extend(["--cgroup".into(), cgroup.relative().into()]),
            None => agent_args.extend(["--pid".into(), client.id().to_string().into()]),
        }
        let agent = (mode != Mode::Baseline)
            .then(|| RunningAgent::start(agent, &agent_args))
            .transpose()?;

        let start = Instant::now();
        client
            .stdin
            .take()
            .context("client stdin")?
            .write_all(b"go\n")
            .context("starting the loop")?;
        let status = client.wait().context("waiting for the curl loop")?;
        let elapsed = start.elapsed();
        let summary = agent.map(RunningAgent::finish).transpose()?;
        let _ = fs::remove_dir_all(&out_dir);
        ensure!(status.success(), "the curl loop failed ({status})");

        let codes = fs::read_to_string(&codes_file).context("reading curl's status codes")?;
        let ok = codes.lines().filter(|l| l.starts_with("200 ")).count();
        let connects: u64 = codes
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        ensure!(
            ok == requests as usize,
            "{ok} of {requests} requests answered 200"
        );
        ensure!(
            connects == 1,
            "the loop opened {connects} connections, not one keep-alive connection"
        );
        Ok(Sample {
            requests_per_second: f64::from(requests) / elapsed.as_secs_f64(),
            summary,
        })
    }
}

/// The agent, started and attached; its stderr is collected as it comes.
struct RunningAgent {
    child: Child,
    stderr: thread::JoinHandle<String>,
}

impl RunningAgent {
    /// Starts the agent and waits until it says it is capturing.
    fn start(agent: &Path, args: &[std::ffi::OsString]) -> anyhow::Result<Self> {
        let mut child = Command::new(agent)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, rx) = mpsc::channel();
        let stderr = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("llmsim-agent: capturing") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if rx.recv_timeout(READY_TIMEOUT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let said = stderr.join().unwrap_or_default();
            bail!("the agent never attached:\n{said}");
        }
        Ok(Self { child, stderr })
    }

    /// Stops the agent (a `--pid` capture ends with its process; SIGINT ends
    /// any other) and reads its summary.
    fn finish(mut self) -> anyhow::Result<AgentSummary> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .context("agent stdout")?
            .read_to_string(&mut stdout)
            .context("reading the agent's summary")?;
        let status = self.child.wait().context("waiting for the agent")?;
        let said = self.stderr.join().unwrap_or_default();
        ensure!(status.success(), "the agent failed ({status}):\n{said}");
        Ok(parse_summary(&stdout))
    }
}

/// Reads the counters out of the agent's `--json` summary (`"key": number`).
fn parse_summary(json: &str) -> AgentSummary {
    let field = |key: &str| -> u64 {
        let needle = format!("\"{key}\":");
        json.find(&needle)
            .map(|at| &json[at + needle.len()..])
            .and_then(|rest| {
                rest.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    AgentSummary {
        written: field("exchanges_written"),
        ignored: field("exchanges_ignored"),
        dropped: field("events_dropped_total"),
        plaintext_bytes: field("plaintext_bytes"),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    }
}
