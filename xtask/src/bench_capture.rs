//! `cargo xtask bench capture [REQUESTS] [PAIRS]`: what attaching the agent
//! costs a TLS client. A keep-alive HTTPS loop (curl, URL globbing: REQUESTS
//! requests over one connection through the system `libssl.so.3`) fetches a
//! 1 KiB JSON body from a local nginx, alternately without the agent, under
//! the agent with the host filter dropping every exchange (127.0.0.1 is not a
//! provider: uprobes, ring buffer and reassembly, no files), and under the
//! agent with `--any-host` (every exchange also written to disk). Reports the
//! median requests per second of each, the ratio to the baseline, and the
//! added time per request and per `SSL_*` call.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use llmsim_tests::{TestCa, repo_root};

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
    Filtered,
    AnyHost,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Baseline, Mode::Filtered, Mode::AnyHost];

    fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline (no agent)",
            Mode::Filtered => "agent, host filtered (no files)",
            Mode::AnyHost => "agent --any-host (files written)",
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
    client.run(None, requests / 5 + 1)?;

    let mut samples: Vec<Vec<Sample>> = Mode::ALL.iter().map(|_| Vec::new()).collect();
    for round in 1..=pairs {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let sample = match mode {
                Mode::Baseline => client.run(None, requests)?,
                Mode::Filtered | Mode::AnyHost => client.run(Some((&agent, mode)), requests)?,
            };
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
    Ok(())
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
    /// One loop of `requests` requests, under the agent when `agent` is given.
    /// The loop times itself (a shell around curl writes the clock before and
    /// after), so the agent's start-up and shutdown are outside the figure.
    fn run(&self, agent: Option<(&Path, Mode)>, requests: u32) -> anyhow::Result<Sample> {
        let url = if requests == self.requests {
            self.url.clone()
        } else {
            self.url.replace(
                &format!("[1-{}]", self.requests),
                &format!("[1-{requests}]"),
            )
        };
        let start_file = self.work.join("t-start");
        let end_file = self.work.join("t-end");
        let codes_file = self.work.join("codes");
        let script = r#"date +%s%N > "$1"; "$2" --http1.1 --insecure --silent --output /dev/null --write-out '%{http_code} %{num_connects}\n' "$3" > "$4"; rc=$?; date +%s%N > "$5"; exit $rc"#;
        let mut shell = vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "bench".into(),
            start_file.clone().into_os_string(),
            self.curl.clone().into_os_string(),
            url.into(),
            codes_file.clone().into_os_string(),
            end_file.clone().into_os_string(),
        ];
        let out_dir = self.work.join("capture");
        let (status, summary) = match agent {
            None => {
                let status = Command::new(&shell[0])
                    .args(&shell[1..])
                    .stdin(Stdio::null())
                    .status()
                    .context("running the curl loop")?;
                (status, None)
            }
            Some((agent, mode)) => {
                let _ = fs::remove_dir_all(&out_dir);
                let mut args: Vec<std::ffi::OsString> = vec![
                    "capture".into(),
                    "--json".into(),
                    "--out".into(),
                    out_dir.clone().into_os_string(),
                ];
                if mode == Mode::AnyHost {
                    args.push("--any-host".into());
                }
                args.push("--".into());
                args.append(&mut shell);
                let (status, stdout) = run_agent(agent, &args)?;
                let _ = fs::remove_dir_all(&out_dir);
                (status, Some(parse_summary(&stdout)))
            }
        };
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
        let nanos = |p: &Path| -> anyhow::Result<u128> {
            fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .parse()
                .with_context(|| format!("parsing {}", p.display()))
        };
        let elapsed_ns = nanos(&end_file)? - nanos(&start_file)?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "nanoseconds of a run fit an f64 well enough"
        )]
        let requests_per_second = f64::from(requests) / (elapsed_ns as f64 / 1e9);
        Ok(Sample {
            requests_per_second,
            summary,
        })
    }
}

/// Runs the agent, echoing nothing unless it fails; returns its status and stdout.
/// stderr is read as it comes so that an agent that never attaches is reported
/// with what it said.
fn run_agent(
    agent: &Path,
    args: &[std::ffi::OsString],
) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let mut child = Command::new(agent)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let stderr = child.stderr.take().context("agent stderr")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
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
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("agent stdout")?
        .read_to_string(&mut stdout)
        .context("reading the agent's summary")?;
    let status = child.wait().context("waiting for the agent")?;
    let stderr = reader.join().unwrap_or_default();
    let attached = rx.try_recv().is_ok();
    if !attached || !status.success() {
        bail!(
            "the agent {} ({status}):\n{stderr}",
            if attached { "failed" } else { "never attached" }
        );
    }
    Ok((status, stdout))
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
