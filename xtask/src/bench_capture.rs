//! `cargo xtask bench capture [REQUESTS] [ROUNDS] [--only PARTS]`: what
//! attaching the agent costs a TLS client, in seven parts (`--only` picks some).
//!
//! 1. `h1`: a keep-alive HTTPS loop (curl, URL globbing: REQUESTS requests over
//!    one connection through the system `libssl.so.3`) fetches a 1 KiB JSON
//!    body from a local nginx over HTTP/1.1, without the agent and under it
//!    four ways: `--pid` with the host filter dropping every exchange
//!    (127.0.0.1 is not a provider: uprobes, ring buffer and reassembly, no
//!    files; breakpoints in curl only), `--pid --any-host` (every exchange also
//!    written to disk), `-- CMD` and `--cgroup` with the same filter
//!    (breakpoints in the target processes only on kernels from 6.6; in every
//!    process that maps libssl, nginx included, on older ones).
//! 2. `h2`: the same loop over HTTP/2 (curl negotiates h2 by ALPN with nginx's
//!    `http2` listener; every request must report HTTP version 2), without the
//!    agent, under `--pid` and under `--pid --any-host`. When both loops run,
//!    their runs alternate in the same rounds and the added cost per request
//!    of each mode is compared between the two protocols.
//! 3. `per-call`: the cost of one probed call for each probe placement
//!    (worker, wrapper, entry; see docs/capture.md): a tight loop of
//!    `SSL_read_ex` calls on a memory BIO, with no network and no other
//!    process involved.
//! 4. `slow`: the HTTP/1.1 loop against a server that answers after 20 ms, as
//!    a provider does at best: capture should be within noise there.
//! 5. `go`: a Go client's keep-alive loop (see [`go`]).
//! 6. `rss`: the agent's memory under `--all` during a 1 GiB download (see
//!    [`rss`]).
//! 7. `bystander`: what a process outside the target pays per syscall (see
//!    [`bystander`]).
//!
//! Method: the client (a shell that becomes curl) waits on stdin until the
//! agent is attached; the time of a run is the sum of curl's own per-request
//! times (`%{time_total}`), so process start-up and the agent's start and stop
//! stay outside it. Each round runs every variant once in a fresh random
//! order, after a warm-up run, so no variant always follows the same one or
//! meets the CPU at the same frequency; with two or more CPUs the client runs
//! on CPU 0 and nginx (one worker) on CPU 1, so the scheduler cannot move
//! them onto one core in some runs and not in others; idle CPUs poll rather
//! than halt (see [`IdlePolling`]), so a wakeup costs the same in every run
//! whatever else keeps a CPU busy. Each variant reports its
//! median, its fastest and slowest run, and the spread between those. A
//! `--pid --any-host` run must write one exchange per request.

use std::{
    ffi::OsString,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use llmsim_tests::{TestCa, TestCgroup};

mod bystander;
mod go;
mod rss;

use crate::bench_support::{
    Guard, IdlePolling, Nginx, READY_TIMEOUT, bench_tools, free_port, is_root, median,
    release_binary,
};

#[derive(Parser)]
#[command(
    name = "cargo xtask bench capture",
    about = "what attaching the agent costs a TLS client: curl's keep-alive loops over HTTP/1.1 \
             and h2, one probed call per probe placement, a loop against a slow server"
)]
struct Args {
    /// Requests per run of the loops against nginx.
    #[arg(default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Rounds; every round runs each variant of a part once, in random order.
    #[arg(default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Run only these parts (comma-separated); all of them by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

/// A part of the bench.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The HTTP/1.1 loop against nginx, without the agent and in each of its five modes.
    H1,
    /// The h2 loop against nginx, without the agent, `--pid` and `--pid --any-host`.
    H2,
    /// One probed `SSL_read_ex` per probe placement.
    PerCall,
    /// The HTTP/1.1 loop against a server answering after 20 ms.
    Slow,
    /// A Go client's HTTP/1.1 loop against nginx, without the agent, `--pid` and `-- CMD`.
    Go,
    /// The agent's peak RSS under `--all` during a 1 GiB HTTPS download.
    Rss,
    /// What a process outside the target pays per syscall.
    Bystander,
}

/// The HTTP version a loop speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Http1 => "HTTP/1.1",
            Proto::H2 => "h2",
        }
    }

    /// curl's flag asking for this version (h2 by ALPN on TLS).
    fn curl_flag(self) -> &'static str {
        match self {
            Proto::Http1 => "--http1.1",
            Proto::H2 => "--http2",
        }
    }

    /// This version as curl's `%{http_version}` prints it.
    fn curl_version(self) -> &'static str {
        match self {
            Proto::Http1 => "1.1",
            Proto::H2 => "2",
        }
    }

    /// SSL calls per request, as an estimate (the agent does not count calls):
    /// over HTTP/1.1, one `SSL_write` (the request) and, for a 1 KiB response
    /// arriving in one TLS record, one `SSL_read`. An h2 connection also
    /// carries SETTINGS, `WINDOW_UPDATE` and PING frames at times of the peers'
    /// choosing, so there is no fixed count.
    fn ssl_calls_per_request(self) -> Option<f64> {
        match self {
            Proto::Http1 => Some(2.0),
            Proto::H2 => None,
        }
    }
}

const BODY_BYTES: usize = 1024;
/// Requests per run against the slow server.
const SLOW_REQUESTS: u32 = 100;
/// How long the slow server takes to answer.
const SLOW_ANSWER: Duration = Duration::from_millis(20);
/// The CPU the client runs on, and the one its server runs on.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Baseline,
    Pid,
    PidAnyHost,
    Command,
    Cgroup,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Baseline,
        Mode::Pid,
        Mode::PidAnyHost,
        Mode::Command,
        Mode::Cgroup,
    ];
    /// The modes of the h2 loop.
    const H2: [Mode; 3] = [Mode::Baseline, Mode::Pid, Mode::PidAnyHost];

    fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline (no agent)",
            Mode::Pid => "--pid, host filtered (no files)",
            Mode::PidAnyHost => "--pid --any-host (files written)",
            Mode::Command => "-- CMD, host filtered (no files)",
            Mode::Cgroup => "--cgroup, host filtered (no files)",
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
    /// What the kernel skipped on connections to hosts not recorded.
    skipped_calls: u64,
    skipped_bytes: u64,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let args = Args::try_parse_from(
        std::iter::once("cargo xtask bench capture".to_owned()).chain(args.iter().cloned()),
    )?;
    let (requests, rounds) = (args.requests, args.rounds);
    let runs = |part: Part| args.only.is_empty() || args.only.contains(&part);
    ensure!(
        is_root()?,
        "the capture benchmark attaches eBPF probes: run it as root (sudo -E cargo xtask bench capture)"
    );
    let [curl, nginx, taskset] = bench_tools(["curl", "nginx", "taskset"])?;
    let agent = release_binary("llmsim-agent", "llmsim-agent", true)?;
    let pinned = thread::available_parallelism().map_or(1, usize::from) >= 2;
    let pin = |cpu: usize| pinned.then(|| (taskset.clone(), cpu));
    let mut order = Shuffle::seeded();
    let idle = IdlePolling::hold();
    match &idle {
        Ok(_) => println!("idle CPUs poll for the whole benchmark (a CPU latency limit of 0 us)"),
        Err(e) => println!(
            "idle CPUs halt, as the machine sets them, which makes loops slower and noisier ({e})"
        ),
    }

    let ca = TestCa::new();
    let work = ca.dir().to_path_buf();
    let client = |url: String, proto: Proto| Client {
        curl: curl.clone(),
        pin: pin(CLIENT_CPU),
        url,
        proto,
        work: work.clone(),
    };
    if runs(Part::H1) || runs(Part::H2) {
        let server = Nginx::start_on(
            &nginx,
            &work,
            body().as_bytes(),
            &ca,
            pinned.then_some(SERVER_CPU),
        )?;
        let h1 = client(format!("https://{}/x", server.https), Proto::Http1);
        let h2 = client(format!("https://{}/x", server.h2), Proto::H2);
        let loops: Vec<Loop> = [
            (runs(Part::H1), &h1, &Mode::ALL[..]),
            (runs(Part::H2), &h2, &Mode::H2[..]),
        ]
        .into_iter()
        .filter(|(selected, _, _)| *selected)
        .map(|(_, client, modes)| Loop { client, modes })
        .collect();
        let protos: Vec<&str> = loops.iter().map(|l| l.client.proto.name()).collect();
        println!(
            "capture overhead: {requests} keep-alive HTTPS requests per run ({} curl -> libssl.so.3 \
             -> nginx, {BODY_BYTES}-byte body, loopback), {rounds} rounds of {} runs in random order{}\n",
            protos.join(" and "),
            loops.iter().map(|l| l.modes.len()).sum::<usize>(),
            if pinned {
                format!(", client on CPU {CLIENT_CPU}, nginx on CPU {SERVER_CPU}")
            } else {
                String::from(", unpinned (one CPU)")
            }
        );
        let samples = rounds_of(&loops, &agent, requests, rounds, &mut order)?;
        drop(server);
        for (l, samples) in loops.iter().zip(&samples) {
            report(l, samples);
        }
        if let [h1, h2] = &loops[..] {
            compare(h1, &samples[0], h2, &samples[1]);
        }
    }

    if runs(Part::PerCall) {
        per_call_cost(&agent, rounds, pin(CLIENT_CPU).as_ref(), &mut order)?;
    }

    if runs(Part::Slow) {
        slow_part(
            &client,
            &agent,
            rounds,
            pin(SERVER_CPU).as_ref(),
            &ca,
            &mut order,
        )?;
    }

    if runs(Part::Go) {
        go::run(
            &agent,
            &nginx,
            pinned.then_some(&taskset),
            requests,
            rounds,
            &mut order,
        )?;
    }

    if runs(Part::Rss) {
        rss::run(&agent, &curl, &nginx, &ca)?;
    }

    if runs(Part::Bystander) {
        bystander::run(&agent, rounds, &mut order)?;
    }
    Ok(())
}

/// The HTTP/1.1 loop against a server answering after [`SLOW_ANSWER`], as a
/// provider does at best, without the agent, under `--pid` and `-- CMD`.
fn slow_part(
    client: &dyn Fn(String, Proto) -> Client,
    agent: &Path,
    rounds: u32,
    server_pin: Option<&(PathBuf, usize)>,
    ca: &TestCa,
    order: &mut Shuffle,
) -> anyhow::Result<()> {
    let slow = SlowServer::start(ca, server_pin)?;
    let client = client(format!("https://127.0.0.1:{}/x", slow.port), Proto::Http1);
    let slow_loop = Loop {
        client: &client,
        modes: &[Mode::Baseline, Mode::Pid, Mode::Command],
    };
    println!(
        "\nwith a provider's latency: {SLOW_REQUESTS} keep-alive HTTPS requests per run to a server \
         answering after {} ms (python3 ssl), {rounds} rounds in random order\n",
        SLOW_ANSWER.as_millis()
    );
    let samples = rounds_of(
        std::slice::from_ref(&slow_loop),
        agent,
        SLOW_REQUESTS,
        rounds,
        order,
    )?;
    report(&slow_loop, &samples[0]);
    Ok(())
}

/// One client loop and the modes it runs in; the first mode is [`Mode::Baseline`].
struct Loop<'a> {
    client: &'a Client,
    modes: &'a [Mode],
}

/// `rounds` rounds of one run of each mode of each loop, in a fresh random
/// order each round, after a warm-up run of each loop (page cache, the
/// server's worker, CPU frequency). The samples of each loop and mode, in
/// round order.
fn rounds_of(
    loops: &[Loop],
    agent: &Path,
    requests: u32,
    rounds: u32,
    order: &mut Shuffle,
) -> anyhow::Result<Vec<Vec<Vec<Sample>>>> {
    for l in loops {
        l.client.run(agent, Mode::Baseline, requests / 5 + 1)?;
    }
    let variants: Vec<(usize, usize)> = loops
        .iter()
        .enumerate()
        .flat_map(|(li, l)| (0..l.modes.len()).map(move |mi| (li, mi)))
        .collect();
    let mut samples: Vec<Vec<Vec<Sample>>> = loops
        .iter()
        .map(|l| l.modes.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 1..=rounds {
        for i in order.permutation(variants.len()) {
            let (li, mi) = variants[i];
            let (client, mode) = (loops[li].client, loops[li].modes[mi]);
            let sample = client.run(agent, mode, requests)?;
            println!("{}", round_line(round, client.proto.name(), mode, &sample));
            samples[li][mi].push(sample);
        }
    }
    Ok(samples)
}

/// A small xorshift generator for run orders: the order only has to differ
/// from round to round, not be unpredictable.
struct Shuffle(u64);

impl Shuffle {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self(u64::from(nanos) ^ u64::from(std::process::id()) << 32 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `0..n` in a random order (Fisher-Yates).
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut items: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = usize::try_from(self.next() % (i as u64 + 1)).unwrap_or(0);
            items.swap(i, j);
        }
        items
    }
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

/// The probe placements measured per call, as `LLMSIM_PROBE_PLACEMENT` names them.
const PLACEMENTS: [&str; 3] = ["worker", "wrapper", "entry"];

/// The price of one probed `SSL_*` call on its own, for each placement: the
/// same tight loop of `SSL_read_ex` calls without the agent and under `--pid`
/// with each placement forced, in random order each round.
fn per_call_cost(
    agent: &Path,
    rounds: u32,
    pin: Option<&(PathBuf, usize)>,
    order: &mut Shuffle,
) -> anyhow::Result<()> {
    println!(
        "\nper-call cost: {PER_CALL_CALLS} SSL_read_ex calls on a memory BIO (python3 ssl), \
         {rounds} rounds of {} runs in random order",
        PLACEMENTS.len() + 1
    );
    let variants: Vec<Option<&str>> = std::iter::once(None).chain(PLACEMENTS.map(Some)).collect();
    let mut figures: Vec<Vec<f64>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for i in order.permutation(variants.len()) {
            let placement = variants[i].map(|p| (agent, p));
            figures[i].push(per_call_run(placement, pin)?);
        }
    }
    for (variant, runs) in variants.iter().zip(&figures) {
        let (low, high) = range(runs);
        let us = median(runs.clone());
        let label = variant.map_or_else(
            || "without the agent".to_owned(),
            |p| format!("--pid, {p} probes"),
        );
        // Added per call within each round, against that round's run without the agent.
        let added = if variant.is_some() {
            let added: Vec<f64> = runs.iter().zip(&figures[0]).map(|(w, wo)| w - wo).collect();
            let (added_low, added_high) = range(&added);
            format!(
                "  +{:.2} us per probed call (per round {added_low:+.2} to {added_high:+.2})",
                median(added)
            )
        } else {
            String::new()
        };
        println!("  {label:<24} {us:>8.2} us/call (runs {low:.2}-{high:.2}){added}");
    }
    Ok(())
}

fn per_call_run(
    agent: Option<(&Path, &str)>,
    pin: Option<&(PathBuf, usize)>,
) -> anyhow::Result<f64> {
    let calls = PER_CALL_CALLS.to_string();
    let argv: Vec<OsString> = ["python3", "-c", PER_CALL_SCRIPT, calls.as_str()]
        .map(OsString::from)
        .to_vec();
    let mut client = pinned_command(pin, &argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting python3")?;
    let out = std::env::temp_dir().join(format!("llmsim-bench-per-call-{}", std::process::id()));
    let agent = agent
        .map(|(agent, placement)| {
            let agent_args: Vec<OsString> = vec![
                "capture".into(),
                "--json".into(),
                "--out".into(),
                out.clone().into_os_string(),
                "--pid".into(),
                client.id().to_string().into(),
            ];
            RunningAgent::start(agent, &agent_args, Some(placement), Stdio::null())
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
        agent.finish(true)?;
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

/// The lowest and highest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &v| {
            (low.min(v), high.max(v))
        })
}

/// Microseconds each run of `runs` added per request against the baseline run
/// of the same round.
fn added_per_round(baseline: &[f64], runs: &[f64]) -> Vec<f64> {
    baseline
        .iter()
        .zip(runs)
        .map(|(b, r)| (1.0 / r - 1.0 / b) * 1e6)
        .collect()
}

/// The rates of each mode's runs, in round order.
fn rates(samples: &[Vec<Sample>]) -> Vec<Vec<f64>> {
    samples
        .iter()
        .map(|runs| runs.iter().map(|s| s.requests_per_second).collect())
        .collect()
}

/// The medians, ratios, spreads and added costs of one loop, with a warning
/// for runs that lost events. The ratio and the added cost are taken per round
/// (each mode against the baseline run of the same round), so a load that
/// changes between rounds cancels out; their medians and ranges are reported.
fn report(l: &Loop, samples: &[Vec<Sample>]) {
    let proto = l.client.proto;
    let rates = rates(samples);
    println!(
        "\n{:<34} {:>8} {:>13} {:>7} {:>9} {:>13} {:>11} {:>17} {:>13}",
        format!("{}, median of each", proto.name()),
        "req/s",
        "runs (req/s)",
        "spread",
        "x slower",
        "per round",
        "+us/request",
        "per round",
        "+us/SSL call*"
    );
    for (mode, runs) in l.modes.iter().zip(&rates) {
        let (columns, added) = mode_columns(*mode, &rates[0], runs);
        let (added_low, added_high) = range(&added);
        let added_us = median(added);
        println!(
            "{columns} {:>17} {:>13}",
            format!("{added_low:+.1} to {added_high:+.1}"),
            proto.ssl_calls_per_request().map_or_else(
                || "-".to_owned(),
                |calls| format!("{:.2}", added_us / calls)
            )
        );
    }
    for (mode, runs) in l.modes.iter().zip(samples) {
        let dropped: u64 = runs
            .iter()
            .filter_map(|s| s.summary.as_ref())
            .map(|s| s.dropped)
            .sum();
        if dropped > 0 {
            println!(
                "warning: {} {}: {dropped} kernel events dropped across its runs; those bytes \
                 were never processed, so its figure understates the cost",
                proto.name(),
                mode.label()
            );
        }
    }
    let calls = proto.ssl_calls_per_request().map_or_else(
        || {
            "* not estimated: an h2 connection has no fixed number of SSL calls per request."
                .to_owned()
        },
        |calls| {
            format!(
                "* estimated {calls} SSL calls per request (one SSL_write, one SSL_read); \
                 the agent does not count calls."
            )
        },
    );
    println!(
        "x slower: median over rounds of (baseline / mode) within a round; per round: its range. \
         +us/request: median over rounds of (1/mode - 1/baseline) within a round; per round: \
         its range. spread: (fastest - slowest) / median.\n{calls}\ntarget: at most 1.10x slower"
    );
}

/// The added cost per request of each mode both loops run, HTTP/1.1 (`h1`)
/// next to h2, each against its own baseline in the same round, and the
/// difference within each round. The two are equal within noise when that
/// difference has both signs across the rounds (or is zero in one).
fn compare(h1: &Loop, h1_samples: &[Vec<Sample>], h2: &Loop, h2_samples: &[Vec<Sample>]) {
    let (h1_rates, h2_rates) = (rates(h1_samples), rates(h2_samples));
    println!(
        "\n{:<34} {:>30} {:>30} {:>30}",
        "added per request",
        format!("{}: median (per round)", h1.client.proto.name()),
        format!("{}: median (per round)", h2.client.proto.name()),
        "h2 - HTTP/1.1 (per round)"
    );
    let figure = |added: &[f64]| {
        let (low, high) = range(added);
        format!(
            "{:+.2} us ({low:+.1} to {high:+.1})",
            median(added.to_vec())
        )
    };
    for (h2_index, mode) in h2.modes.iter().enumerate().skip(1) {
        let Some(h1_index) = h1.modes.iter().position(|m| m == mode) else {
            continue;
        };
        let h1_added = added_per_round(&h1_rates[0], &h1_rates[h1_index]);
        let h2_added = added_per_round(&h2_rates[0], &h2_rates[h2_index]);
        let difference: Vec<f64> = h2_added.iter().zip(&h1_added).map(|(a, b)| a - b).collect();
        let (low, high) = range(&difference);
        let more = difference.iter().filter(|d| **d > 0.0).count();
        let verdict = if low <= 0.0 && high >= 0.0 {
            format!(
                "equal within noise (h2 more in {more} of {} rounds)",
                difference.len()
            )
        } else if low > 0.0 {
            "h2 costs more in every round".to_owned()
        } else {
            "h2 costs less in every round".to_owned()
        };
        println!(
            "{:<34} {:>30} {:>30} {:>30}  {verdict}",
            mode.label(),
            figure(&h1_added),
            figure(&h2_added),
            figure(&difference)
        );
    }
    println!(
        "equal within noise: the per-round difference has both signs (each protocol's mode \
         against its own baseline of the same round)"
    );
}

/// A 1 KiB JSON object.
fn body() -> String {
    let head = "{\"id\":\"bench\",\"text\":\"";
    let tail = "\"}\n";
    let fill = BODY_BYTES - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(fill))
}

/// `argv` as a command, under `taskset -c CPU` when pinned.
fn pinned_command(pin: Option<&(PathBuf, usize)>, argv: &[OsString]) -> Command {
    if let Some((taskset, cpu)) = pin {
        let mut command = Command::new(taskset);
        command.arg("-c").arg(cpu.to_string()).args(argv);
        command
    } else {
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
    }
}

struct Client {
    curl: PathBuf,
    /// `taskset` and the CPU the client runs on, when pinned.
    pin: Option<(PathBuf, usize)>,
    /// The URL without the request counter.
    url: String,
    /// The HTTP version curl must speak on every request.
    proto: Proto,
    work: PathBuf,
}

impl Client {
    /// One loop of `requests` requests in `mode`. The client (a shell that
    /// becomes curl, its output in a file) waits for a line on stdin, sent
    /// once the agent says it is capturing; the run's time is the sum of
    /// curl's per-request times. Every request must be answered 200 over
    /// [`Client::proto`] on one connection, and a `--pid --any-host` run must
    /// write one exchange per request.
    fn run(&self, agent: &Path, mode: Mode, requests: u32) -> anyhow::Result<Sample> {
        let codes_file = self.work.join("codes");
        let mut client_argv: Vec<OsString> = vec![
            "sh".into(),
            "-c".into(),
            r#"read go && out=$1 && shift && exec "$@" >"$out""#.into(),
            "bench".into(),
            codes_file.clone().into_os_string(),
        ];
        if let Some((taskset, cpu)) = &self.pin {
            client_argv.extend([
                taskset.clone().into_os_string(),
                "-c".into(),
                cpu.to_string().into(),
            ]);
        }
        client_argv.extend([
            self.curl.clone().into_os_string(),
            self.proto.curl_flag().into(),
            "--insecure".into(),
            "--silent".into(),
            "--output".into(),
            "/dev/null".into(),
            "--write-out".into(),
            "%{http_code} %{num_connects} %{time_total} %{http_version}\n".into(),
            format!("{}?i=[1-{requests}]", self.url).into(),
        ]);
        let _ = fs::remove_file(&codes_file);
        let summary = run_in_mode(
            agent,
            mode,
            &client_argv,
            &self.work.join("capture"),
            "curl",
        )?;

        let codes = fs::read_to_string(&codes_file).context("reading curl's status codes")?;
        let seconds = self.seconds(&codes, requests)?;
        if let (Mode::PidAnyHost, Some(summary)) = (mode, &summary) {
            ensure!(
                summary.written == u64::from(requests),
                "the agent wrote {} exchanges for {requests} {} requests ({} events dropped)",
                summary.written,
                self.proto.name(),
                summary.dropped
            );
        }
        Ok(Sample {
            requests_per_second: f64::from(requests) / seconds,
            summary,
        })
    }

    /// The sum of curl's per-request times in `codes` (its `--write-out`
    /// lines), once every request is found answered 200 over [`Client::proto`]
    /// on one connection.
    fn seconds(&self, codes: &str, requests: u32) -> anyhow::Result<f64> {
        let lines: Vec<Vec<&str>> = codes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let ok = lines.iter().filter(|l| l.first() == Some(&"200")).count();
        let connects: u64 = lines
            .iter()
            .filter_map(|l| l.get(1)?.parse::<u64>().ok())
            .sum();
        let seconds: f64 = lines
            .iter()
            .filter_map(|l| l.get(2)?.parse::<f64>().ok())
            .sum();
        ensure!(
            ok == requests as usize,
            "{ok} of {requests} requests answered 200"
        );
        ensure!(
            connects == 1,
            "the loop opened {connects} connections, not one keep-alive connection"
        );
        let version = self.proto.curl_version();
        let spoken = lines.iter().filter(|l| l.get(3) == Some(&version)).count();
        ensure!(
            spoken == requests as usize,
            "{spoken} of {requests} requests went over {} (curl's %{{http_version}} {version})",
            self.proto.name()
        );
        Ok(seconds)
    }
}

fn write_go(stdin: Option<ChildStdin>) -> anyhow::Result<()> {
    stdin
        .context("client stdin")?
        .write_all(b"go\n")
        .context("starting the loop")
}

/// A keep-alive HTTPS server (python3's `http.server` and `ssl`, HTTP/1.1)
/// that answers every GET with a small JSON body after [`SLOW_ANSWER`].
struct SlowServer {
    _child: Guard,
    port: u16,
}

const SLOW_SERVER_SCRIPT: &str = r#"
import http.server, ssl, sys, time
port, cert, key, delay = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's
    # algorithm holds the body until the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    def do_GET(self):
        time.sleep(delay)
        body = b'{"id":"bench","text":"slow"}\n'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", file=sys.stderr, flush=True)
server.serve_forever()
"#;

impl SlowServer {
    fn start(ca: &TestCa, pin: Option<&(PathBuf, usize)>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let argv: Vec<OsString> = vec![
            "python3".into(),
            "-c".into(),
            SLOW_SERVER_SCRIPT.into(),
            port.to_string().into(),
            ca.leaf_cert_path().into(),
            ca.leaf_key_path().into(),
            SLOW_ANSWER.as_secs_f64().to_string().into(),
        ];
        let child = pinned_command(pin, &argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the slow server")?;
        let mut child = Guard::new(child, "slow server");
        child.wait_for_line(|line| (line == "ready").then_some(()))?;
        Ok(Self {
            _child: child,
            port,
        })
    }
}

/// Runs a client loop (`client_argv`, which waits for a go line on stdin) in
/// `mode`, the agent writing to `out_dir`: alone, under the agent as
/// `-- CMD`, or started first and attached to by pid (or by a cgroup of its
/// own); the agent's summary when it was attached. `what` names the client in
/// errors.
fn run_in_mode(
    agent: &Path,
    mode: Mode,
    client_argv: &[OsString],
    out_dir: &Path,
    what: &str,
) -> anyhow::Result<Option<AgentSummary>> {
    let _ = fs::remove_dir_all(out_dir);
    let mut agent_args: Vec<OsString> = vec![
        "capture".into(),
        "--json".into(),
        "--out".into(),
        out_dir.as_os_str().to_owned(),
    ];
    if mode == Mode::PidAnyHost {
        agent_args.push("--any-host".into());
    }
    let cgroup = (mode == Mode::Cgroup).then(TestCgroup::new);
    let summary = if mode == Mode::Command {
        // The command reads its go line from the agent's stdin, and the
        // agent exits with it.
        agent_args.push("--".into());
        agent_args.extend(client_argv.iter().cloned());
        let mut agent = RunningAgent::start(agent, &agent_args, None, Stdio::piped())?;
        write_go(agent.child.stdin.take())?;
        Some(agent.finish(false)?)
    } else {
        let mut command = match &cgroup {
            Some(cgroup) => cgroup.command(client_argv),
            None => pinned_command(None, client_argv),
        };
        let mut client = command
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {what} loop"))?;
        match &cgroup {
            Some(cgroup) => agent_args.extend(["--cgroup".into(), cgroup.relative().into()]),
            None => agent_args.extend(["--pid".into(), client.id().to_string().into()]),
        }
        let agent = (mode != Mode::Baseline)
            .then(|| RunningAgent::start(agent, &agent_args, None, Stdio::null()))
            .transpose()?;
        write_go(client.stdin.take())?;
        let status = client
            .wait()
            .with_context(|| format!("waiting for the {what} loop"))?;
        ensure!(status.success(), "the {what} loop failed ({status})");
        agent.map(|agent| agent.finish(true)).transpose()?
    };
    let _ = fs::remove_dir_all(out_dir);
    Ok(summary)
}

/// The columns every loop's table starts with, for `mode` run at `runs`
/// req/s against `baseline` in the same rounds: its median rate, the runs'
/// range and spread, how much slower (median and range over rounds), and the
/// median time added per request; with the added time of each round.
fn mode_columns(mode: Mode, baseline: &[f64], runs: &[f64]) -> (String, Vec<f64>) {
    let rps = median(runs.to_vec());
    let (low, high) = range(runs);
    let ratios: Vec<f64> = baseline.iter().zip(runs).map(|(b, r)| b / r).collect();
    let (ratio_low, ratio_high) = range(&ratios);
    let added = added_per_round(baseline, runs);
    let columns = format!(
        "{:<34} {:>8.0} {:>13} {:>6.0}% {:>8.3}x {:>13} {:>11.2}",
        mode.label(),
        rps,
        format!("{low:.0}-{high:.0}"),
        (high - low) / rps * 100.0,
        median(ratios),
        format!("{ratio_low:.2}-{ratio_high:.2}x"),
        median(added.clone()),
    );
    (columns, added)
}

/// The line a run prints when it ends: its round, client, mode, rate and
/// what the agent counted.
fn round_line(round: u32, client: &str, mode: Mode, sample: &Sample) -> String {
    let mut line = format!(
        "round {round}  {client:<8} {:<34} {:>9.0} req/s",
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
    line
}

/// The agent, started and attached; its stderr is collected as it comes.
struct RunningAgent {
    child: Child,
    stderr: thread::JoinHandle<String>,
}

impl RunningAgent {
    /// Starts the agent (with a probe placement forced, and its stdin as
    /// given: a `-- CMD` inherits it) and waits until it says it is capturing.
    fn start(
        agent: &Path,
        args: &[OsString],
        placement: Option<&str>,
        stdin: Stdio,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(agent);
        command
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(placement) = placement {
            command.env("LLMSIM_PROBE_PLACEMENT", placement);
        }
        let mut child = command
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

    /// Reads the agent's summary once it exits: by itself (a `-- CMD`
    /// capture ends with its command), or on SIGINT when `interrupt` (what
    /// ends a `--cgroup` capture; a `--pid` one ends with its process anyway).
    fn finish(mut self, interrupt: bool) -> anyhow::Result<AgentSummary> {
        if interrupt {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
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
        parse_summary(&stdout)
    }
}

/// Reads the counters out of the agent's `--json` summary.
fn parse_summary(json: &str) -> anyhow::Result<AgentSummary> {
    let summary: serde_json::Value = serde_json::from_str(json.trim())
        .with_context(|| format!("the agent's summary is not JSON:\n{json}"))?;
    let field = |pointer: &str| -> anyhow::Result<u64> {
        summary
            .pointer(pointer)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("no {pointer} in the agent's summary:\n{json}"))
    };
    Ok(AgentSummary {
        written: field("/exchanges_written")?,
        ignored: field("/exchanges_ignored")?,
        dropped: field("/events_dropped_total")?,
        plaintext_bytes: field("/connections/plaintext_bytes")?,
        skipped_calls: field("/skipped/calls")?,
        skipped_bytes: field("/skipped/bytes")?,
    })
}
