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
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use llmsim_tests::{TestCa, TestCgroup};

use crate::bench_support::{Nginx, READY_TIMEOUT, bench_tools, is_root, median, release_binary};

const DEFAULT_REQUESTS: u32 = 5000;
const DEFAULT_PAIRS: u32 = 3;
/// Each request is one `SSL_write` (the request) and, for a 1 KiB response
/// arriving in one TLS record, one `SSL_read`; the agent does not count calls,
/// so this is an estimate.
const SSL_CALLS_PER_REQUEST: f64 = 2.0;
const BODY_BYTES: usize = 1024;

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
    let [curl, nginx] = bench_tools(["curl", "nginx"])?;
    let agent = release_binary("llmsim-agent", "llmsim-agent", true)?;

    let ca = TestCa::new();
    let work = ca.dir().to_path_buf();
    let server = Nginx::start(&nginx, &work, body().as_bytes(), &ca)?;
    let url = format!("https://{}/x?i=[1-{requests}]", server.https);
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
