//! `cargo xtask bench replay`: throughput and latency of replayd serving one recorded 1 KiB JSON
//! answer over keep-alive HTTP/1.1, plain and TLS, against nginx serving the same bytes on the
//! same machine in the same run. Two kinds of run, each with a real load generator:
//!
//! - Saturation (`wrk`, a closed loop: every connection sends its next request as soon as the
//!   answer arrives) gives the most requests per second each server can answer; replayd's rate
//!   is reported as a ratio of nginx's. Its latencies are reported too, but with the load
//!   generator and the server sharing the cores flat out they are mostly time spent waiting
//!   for a CPU, not time spent serving.
//! - Latency (`oha`, an open loop at a fixed rate offered to both servers alike) gives p50, p99
//!   and p99.9 measured from each request's scheduled start, so a stall also counts against the
//!   requests that queued behind it (no coordinated omission). The first second, in which the
//!   connections are opened and handshaken all at once, is a warm-up left out of them. The rate is a fixed figure rather
//!   than a share of the saturation rate because the generator must stay well below its own
//!   ceiling too, and oha's (about 50,000 requests a second beside either server on two cores)
//!   is about half of wrk's.
//!
//! The HTTP/2 variant serves the same answer over h2 on TLS (nginx with `http2` on its
//! listener), several streams in flight on each connection: a saturation run with `h2load`
//! (closed loop) and a run at the fixed offered rate with `oha --http2`, an open loop whose
//! latencies are measured from each request's scheduled start as in the HTTP/1.1 variant.
//! h2load cannot offer a fixed request rate to the whole run (its `--rate` is connections
//! per second, its `--rps` a rate per connection) nor measure from a scheduled start (it
//! times each request from its sending, so a stall hides the requests that queued behind
//! it).
//!
//! The `sdk-post` and `mitmproxy` variants send what a load test really sends, a recorded
//! openai-python chat completion POST, to replayd and to nginx returning a fixed body of the
//! same size, and to mitmproxy's server replay (see `bench_replay/post.rs`). `--only
//! h1|h2|sdk-post|mitmproxy` runs one variant alone.
//!
//! The servers take turns (which one goes first alternates every round) so that drift in the
//! machine's speed hits both alike.
//!
//! Everything stays on loopback. The snapshot, the nginx configuration and both CAs live in a
//! temporary directory that is removed afterwards; replayd and nginx are killed on the way out,
//! whatever happens.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use llmsim_tests::{TestCa, snapshot::write_exchanges};

use crate::bench_support::{
    Nginx, Replayd, bench_tools, median, quantile, release_binary, report_of,
};

mod post;

/// Size of the recorded answer's body, in bytes.
const BODY_LEN: usize = 1024;
/// The recorded request: a GET with no body, which is what wrk and oha send by default.
const PATH: &str = "/v1/models";
/// How long a server may take to start listening.
/// The bench's targets: replayd's saturation rate as a share of nginx's, and its p99 at the
/// latency run's fixed rate.
const TARGET_RATIO: f64 = 0.8;
const TARGET_P99_MS: f64 = 2.0;
/// The share of the offered rate a latency run must achieve for its figures to count.
const SUSTAINED_SHARE: f64 = 0.97;

#[derive(Parser)]
#[command(
    name = "cargo xtask bench replay",
    about = "replayd against nginx serving the same 1 KiB JSON answer: saturation with wrk, \
             latency at a fixed rate with oha"
)]
struct Args {
    /// Seconds each wrk or oha run lasts.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Rounds; every round measures each server once per scheme and kind of run. The tables
    /// show medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keep-alive connections wrk and oha hold open.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Requests per second oha offers in the latency runs, the same for both servers: about a
    /// fifth of what either server answers at saturation on two cores, and well within what
    /// oha itself sustains beside the server.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// HTTP/2 connections h2load and oha open.
    #[arg(long, default_value_t = 8)]
    h2_clients: u32,
    /// Streams each HTTP/2 connection keeps in flight (h2load), or at most (oha at the fixed
    /// rate).
    #[arg(long, default_value_t = 8)]
    h2_streams: u32,
    /// Run only one variant: `h1` (wrk and oha over HTTP/1.1), `h2` (h2load and oha over
    /// h2), `sdk-post` (a recorded openai-python POST, against nginx) or `mitmproxy` (the
    /// same POST, against mitmproxy's server replay).
    #[arg(long, value_enum)]
    only: Option<Variant>,
    /// Use the replayd already in target/release instead of building it first.
    #[arg(long)]
    no_build: bool,
}

/// A part of the bench.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Variant {
    /// Keep-alive HTTP/1.1, plain and TLS.
    H1,
    /// HTTP/2 over TLS.
    H2,
    /// A recorded openai-python chat completion POST, replayd against nginx.
    SdkPost,
    /// The same POST, replayd against mitmproxy's server replay.
    Mitmproxy,
}

impl Args {
    /// Whether this run measures `variant`.
    fn runs(&self, variant: Variant) -> bool {
        self.only.is_none_or(|only| only == variant)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Replayd,
    Nginx,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Replayd => "replayd",
            Server::Nginx => "nginx",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One wrk run's figures.
#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One oha run's figures at a fixed offered rate; latencies from each request's scheduled start.
#[derive(Clone, Copy, Debug)]
struct Latency {
    /// The rate achieved.
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let args = Args::try_parse_from(
        std::iter::once("cargo xtask bench replay".to_owned()).chain(args.iter().cloned()),
    )?;
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.duration > 0, "--duration must be at least 1 second");
    ensure!(
        args.connections >= args.threads && args.threads > 0,
        "wrk needs at least one thread and at least as many connections as threads"
    );
    ensure!(
        args.rate > 0,
        "--rate must be at least 1 request per second"
    );
    ensure!(
        args.h2_clients >= args.threads && args.h2_streams > 0,
        "h2load needs at least as many --h2-clients as --threads, and --h2-streams of at least 1"
    );

    let tools = ensure_tools()?;
    let replayd_bin = release_binary("llmsim-replayd", "replayd", !args.no_build)?;

    // The test CA's temporary directory doubles as the bench's scratch directory: it holds the
    // leaf nginx serves, and everything below goes in there too, removed when `ca` drops.
    let ca = TestCa::new();
    let scratch = ca.dir().to_path_buf();
    let body = answer_body();
    write_snapshot(&scratch.join("snapshot"), &body)?;

    let mut replayd = Replayd::start(
        &replayd_bin,
        &scratch.join("snapshot"),
        &scratch.join("replayd-ca"),
        "instant",
    )?;
    let mut nginx = Nginx::start(&tools.nginx, &scratch, &body, &ca)?;

    if args.runs(Variant::H2) {
        ensure_h2_answers(&[replayd.addr, nginx.h2])?;
    }
    let targets = [
        (Server::Replayd, Scheme::Http, replayd.addr),
        (Server::Replayd, Scheme::Https, replayd.addr),
        (Server::Nginx, Scheme::Http, nginx.http),
        (Server::Nginx, Scheme::Https, nginx.https),
    ];
    let url = |scheme: Scheme, addr: SocketAddr| format!("{}://{addr}{PATH}", scheme.name());

    // Both servers must answer with the very same body before anything is measured.
    for (server, scheme, addr) in targets {
        if scheme == Scheme::Http {
            let (head, got) = fetch_plain(addr)?;
            ensure!(
                got == body,
                "{} answered {} body bytes that differ from the recorded answer:\n{head}",
                server.name(),
                got.len()
            );
            println!(
                "{:<8} {}: 200 with {} header bytes + {} body bytes, body identical",
                server.name(),
                url(scheme, addr),
                head.len() + 4,
                got.len()
            );
        }
    }

    // Other work on the machine competes for the same two cores and shows in every figure,
    // the tail most: the report says how busy the machine was as the runs began.
    let load = load_average();
    let mut summary = String::new();

    if args.runs(Variant::H1) {
        // A short warm-up per target: TLS session set-up, page faults, CPU frequency.
        eprintln!("xtask: warming up");
        for (server, scheme, addr) in targets {
            wrk(&args, 1, &url(scheme, addr), None)
                .with_context(|| format!("warm-up of {} over {}", server.name(), scheme.name()))?;
        }

        let addrs = Addrs {
            replayd: replayd.addr,
            nginx_http: nginx.http,
            nginx_https: nginx.https,
        };
        let samples = saturation_runs(&args, addrs)?;
        let latencies = latency_runs(&args, &tools.oha, addrs)?;
        summary += &report(&args, &tools.oha_version, &load, &samples, &latencies);
    }
    if args.runs(Variant::H2) {
        let h2 = H2Addrs {
            replayd: replayd.addr,
            nginx: nginx.h2,
        };
        let runs = h2_runs(&args, &scratch, &tools.oha, h2)?;
        summary += &h2_report(&args, &tools, &load, &runs);
    }
    summary += &post::run(&args, &ca, &tools.nginx, &replayd_bin, &scratch)?;
    replayd.child.check_alive()?;
    nginx.child.check_alive()?;

    print!("{summary}");
    Ok(())
}

/// The 1, 5 and 15 minute load averages, as the kernel prints them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

/// Where each server listens.
#[derive(Clone, Copy)]
struct Addrs {
    replayd: SocketAddr,
    nginx_http: SocketAddr,
    nginx_https: SocketAddr,
}

impl Addrs {
    fn url(self, server: Server, scheme: Scheme) -> String {
        let addr = match (server, scheme) {
            (Server::Replayd, _) => self.replayd,
            (Server::Nginx, Scheme::Http) => self.nginx_http,
            (Server::Nginx, Scheme::Https) => self.nginx_https,
        };
        format!("{}://{addr}{PATH}", scheme.name())
    }
}

/// Every round measures both servers per scheme, the one going first alternating.
fn turns(rounds: usize) -> impl Iterator<Item = (usize, Scheme, Server)> {
    (0..rounds).flat_map(|round| {
        [Scheme::Http, Scheme::Https]
            .into_iter()
            .flat_map(move |scheme| {
                let order = if round % 2 == 0 {
                    [Server::Replayd, Server::Nginx]
                } else {
                    [Server::Nginx, Server::Replayd]
                };
                order.map(|server| (round, scheme, server))
            })
    })
}

/// The saturation runs (wrk), printed as they finish.
fn saturation_runs(args: &Args, addrs: Addrs) -> anyhow::Result<Vec<(Server, Scheme, Sample)>> {
    let mut samples = Vec::new();
    for (round, scheme, server) in turns(args.rounds) {
        let sample = wrk(args, args.duration, &addrs.url(server, scheme), None)
            .with_context(|| format!("measuring {} over {}", server.name(), scheme.name()))?;
        println!(
            "saturation {}/{}  {:<5} {:<8} {:>10.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms",
            round + 1,
            args.rounds,
            scheme.name(),
            server.name(),
            sample.rps,
            sample.p50_ms,
            sample.p99_ms
        );
        samples.push((server, scheme, sample));
    }
    Ok(samples)
}

/// The latency runs at the fixed rate (oha), printed as they finish.
fn latency_runs(
    args: &Args,
    oha_bin: &Path,
    addrs: Addrs,
) -> anyhow::Result<Vec<(Server, Scheme, Latency)>> {
    let mut latencies = Vec::new();
    for (round, scheme, server) in turns(args.rounds) {
        let url = addrs.url(server, scheme);
        let latency = oha(args, oha_bin, &url, OhaProtocol::Http1).with_context(|| {
            format!(
                "measuring {} over {} at {} req/s",
                server.name(),
                scheme.name(),
                args.rate
            )
        })?;
        println!(
            "latency {}/{}  {:<5} {:<8} {:>10.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  \
             p99.9 {:>6.3} ms",
            round + 1,
            args.rounds,
            scheme.name(),
            server.name(),
            latency.rps,
            latency.p50_ms,
            latency.p99_ms,
            latency.p999_ms
        );
        latencies.push((server, scheme, latency));
    }
    Ok(latencies)
}

/// The median over the rounds of one figure of one server and scheme.
fn median_by<T>(
    rows: &[(Server, Scheme, T)],
    server: Server,
    scheme: Scheme,
    f: impl Fn(&T) -> f64,
) -> f64 {
    median(
        rows.iter()
            .filter(|(s, c, _)| *s == server && *c == scheme)
            .map(|(_, _, x)| f(x))
            .collect(),
    )
}

/// The summary: medians over the rounds of each kind of run, replayd's saturation rate as a
/// ratio of nginx's, and the verdict on the targets.
fn report(
    args: &Args,
    oha_version: &str,
    load: &str,
    samples: &[(Server, Scheme, Sample)],
    latencies: &[(Server, Scheme, Latency)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nreplay: {BODY_LEN}-byte JSON answer, keep-alive HTTP/1.1, {} connections, median of {} \
         x {} s runs per row; load average as the runs began: {load}",
        args.connections, args.rounds, args.duration
    );
    let ratios_met = saturation_table(&mut out, args, samples);
    let latency_met = latency_table(&mut out, args, oha_version, latencies);
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let _ = writeln!(
        out,
        "\ntarget, both schemes: saturation rate >= {TARGET_RATIO:.1}x nginx: {}; p99 < \
         {TARGET_P99_MS} ms at {} req/s: {}",
        verdict(ratios_met),
        args.rate,
        verdict(latency_met)
    );
    out
}

/// The saturation table; whether replayd's rate is at least [`TARGET_RATIO`] of nginx's in
/// both schemes.
fn saturation_table(out: &mut String, args: &Args, samples: &[(Server, Scheme, Sample)]) -> bool {
    let saturation = |server: Server, scheme: Scheme| Sample {
        rps: median_by(samples, server, scheme, |x| x.rps),
        p50_ms: median_by(samples, server, scheme, |x| x.p50_ms),
        p99_ms: median_by(samples, server, scheme, |x| x.p99_ms),
    };
    let _ = writeln!(
        out,
        "\nsaturation (wrk -t{}, closed loop; its latencies are mostly waiting for a CPU)",
        args.threads
    );
    let _ = writeln!(
        out,
        "{:<7} {:<8} {:>10} {:>10} {:>10} {:>10}",
        "scheme", "server", "req/s", "p50 ms", "p99 ms", "vs nginx"
    );
    let mut met = true;
    for scheme in [Scheme::Http, Scheme::Https] {
        let ours = saturation(Server::Replayd, scheme);
        let theirs = saturation(Server::Nginx, scheme);
        let ratio = ours.rps / theirs.rps;
        met &= ratio >= TARGET_RATIO;
        for (server, s, vs) in [
            (Server::Replayd, ours, format!("{ratio:.2}x")),
            (Server::Nginx, theirs, "1.00x".to_owned()),
        ] {
            let _ = writeln!(
                out,
                "{:<7} {:<8} {:>10.0} {:>10.3} {:>10.3} {:>10}",
                scheme.name(),
                server.name(),
                s.rps,
                s.p50_ms,
                s.p99_ms,
                vs
            );
        }
    }
    met
}

/// The fixed-rate latency table; whether replayd kept up with the rate with a p99 under
/// [`TARGET_P99_MS`] in both schemes.
fn latency_table(
    out: &mut String,
    args: &Args,
    oha_version: &str,
    latencies: &[(Server, Scheme, Latency)],
) -> bool {
    let at_rate = |server: Server, scheme: Scheme| Latency {
        rps: median_by(latencies, server, scheme, |x| x.rps),
        p50_ms: median_by(latencies, server, scheme, |x| x.p50_ms),
        p99_ms: median_by(latencies, server, scheme, |x| x.p99_ms),
        p999_ms: median_by(latencies, server, scheme, |x| x.p999_ms),
    };
    let _ = writeln!(
        out,
        "\nlatency at a fixed {} req/s offered to each server (oha {oha_version}, open loop, \
         measured from each request's scheduled start, after a {WARM_UP_S} s warm-up that opens \
         the connections)",
        args.rate
    );
    let _ = writeln!(
        out,
        "{:<7} {:<8} {:>10} {:>10} {:>10} {:>10}",
        "scheme", "server", "req/s", "p50 ms", "p99 ms", "p99.9 ms"
    );
    let mut met = true;
    let mut sustained = true;
    for scheme in [Scheme::Http, Scheme::Https] {
        for server in [Server::Replayd, Server::Nginx] {
            let l = at_rate(server, scheme);
            let kept_up = l.rps >= SUSTAINED_SHARE * f64::from(args.rate);
            sustained &= kept_up;
            if server == Server::Replayd {
                met &= kept_up && l.p99_ms < TARGET_P99_MS;
            }
            let _ = writeln!(
                out,
                "{:<7} {:<8} {:>10.0} {:>10.3} {:>10.3} {:>10.3}{}",
                scheme.name(),
                server.name(),
                l.rps,
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                if kept_up {
                    ""
                } else {
                    "  (rate not sustained)"
                }
            );
        }
    }
    if !sustained {
        let _ = writeln!(
            out,
            "a run achieved less than {:.0}% of the offered rate: its latencies are not at {} \
             req/s (try a lower --rate)",
            SUSTAINED_SHARE * 100.0,
            args.rate
        );
    }
    met
}

// ---------------------------------------------------------------------------------------------
// Tools

/// The programs the bench runs besides replayd.
struct Tools {
    nginx: PathBuf,
    oha: PathBuf,
    /// What `oha --version` says, for the report.
    oha_version: String,
    /// What `h2load --version` says, for the report.
    h2load_version: String,
}

/// Finds wrk, nginx, oha and h2load, installing them through `scripts/setup.sh --bench` when
/// missing.
fn ensure_tools() -> anyhow::Result<Tools> {
    let [_wrk, nginx, oha, h2load] = bench_tools(["wrk", "nginx", "oha", "h2load"])?;
    let version_of = |bin: &Path, prefix: &str| -> anyhow::Result<String> {
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", bin.display()))?;
        Ok(String::from_utf8_lossy(&version.stdout)
            .trim()
            .trim_start_matches(prefix)
            .to_owned())
    };
    Ok(Tools {
        oha_version: version_of(&oha, "oha ")?,
        h2load_version: version_of(&h2load, "h2load ")?,
        nginx,
        oha,
    })
}

// ---------------------------------------------------------------------------------------------
// The answer and the snapshot

/// A compact model list in `OpenAI`'s shape, padded to exactly [`BODY_LEN`] bytes. Compact and free of floats,
/// so replayd's compact re-serialization of the recorded JSON gives back these very bytes.
fn answer_body() -> Vec<u8> {
    let model = |i: usize| {
        format!(
            r#"{{"id":"gpt-bench-{i:02}","object":"model","created":1735689600,"owned_by":"llmsim"}}"#
        )
    };
    let mut models: Vec<String> = Vec::new();
    let close = |models: &[String], pad: &str| {
        format!(
            r#"{{"object":"list","data":[{}],"pad":"{pad}"}}"#,
            models.join(",")
        )
    };
    while close(&[models.as_slice(), &[model(models.len())]].concat(), "").len() <= BODY_LEN {
        models.push(model(models.len()));
    }
    let bare = close(&models, "").len();
    let body = close(&models, &"x".repeat(BODY_LEN - bare));
    debug_assert_eq!(body.len(), BODY_LEN);
    body.into_bytes()
}

/// A snapshot of one exchange: `GET /v1/models` with no body, answered 200 with `body`.
fn write_snapshot(dir: &Path, body: &[u8]) -> anyhow::Result<()> {
    let answer: serde_json::Value = serde_json::from_slice(body).context("the answer is JSON")?;
    write_exchanges(
        dir,
        [serde_json::json!({
            "request": {"method": "GET", "path": PATH, "headers": [], "body": {"kind": "empty"}},
            "response": {"status": 200, "headers": [["content-type", "application/json"]],
                         "body": {"kind": "json", "json": answer}}
        })],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Servers

/// One plain GET of the bench path; returns the response head and the body (by Content-Length).
fn fetch_plain(addr: SocketAddr) -> anyhow::Result<(String, Vec<u8>)> {
    fetch(
        addr,
        format!("GET {PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Sends `request` (one message that closes the connection) to `addr`; returns the response
/// head and the body (by Content-Length), which must be a 200.
fn fetch(addr: SocketAddr, request: &[u8]) -> anyhow::Result<(String, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no end of headers in the answer from {addr}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{addr} did not answer 200:\n{head}"
    );
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .with_context(|| format!("no Content-Length in the answer from {addr}:\n{head}"))?;
    let body = raw[split + 4..].to_vec();
    ensure!(
        body.len() == length,
        "{addr} sent {} body bytes for Content-Length {length}",
        body.len()
    );
    Ok((head, body))
}

// ---------------------------------------------------------------------------------------------
// wrk

/// Runs wrk against `url` for `seconds` and parses its report; any socket error or non-2xx
/// answer fails the run. `script` (Lua) says what to send instead of a bare GET.
fn wrk(args: &Args, seconds: u32, url: &str, script: Option<&Path>) -> anyhow::Result<Sample> {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    if let Some(script) = script {
        command.arg("--script").arg(script);
    }
    let text = report_of(command.arg(url), &format!("wrk {url}"))?;
    parse_wrk(&text).with_context(|| format!("wrk's report for {url}:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<Sample> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    if let Some(errors) = field("Socket errors:") {
        bail!("socket errors: {errors}");
    }
    if let Some(n) = field("Non-2xx or 3xx responses:") {
        bail!("{n} answers were not 2xx");
    }
    let rps: f64 = field("Requests/sec:")
        .context("no Requests/sec line")?
        .parse()
        .context("Requests/sec is not a number")?;
    let p50_ms = latency_ms(field("50%").context("no 50% latency line (--latency)")?)?;
    let p99_ms = latency_ms(field("99%").context("no 99% latency line (--latency)")?)?;
    ensure!(rps > 0.0, "no requests completed");
    Ok(Sample {
        rps,
        p50_ms,
        p99_ms,
    })
}

/// wrk's latency figures (`812.00us`, `1.23ms`, `2.01s`, `1.50m`) in milliseconds.
fn latency_ms(value: &str) -> anyhow::Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("latency `{value}` has no unit"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("latency `{value}`"))?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        other => bail!("latency `{value}` has an unknown unit `{other}`"),
    };
    Ok(number * scale)
}

// ---------------------------------------------------------------------------------------------
// oha

/// Requests that start in an oha run's first second are left out of its figures: that is
/// when it opens its connections and, over TLS, does all their handshakes at once (64 of them
/// take tens of milliseconds on two cores), which is set-up rather than serving. wrk2 leaves
/// out a calibration period for the same reason.
const WARM_UP_S: u32 = 1;

/// How oha talks to the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OhaProtocol {
    /// `--connections` keep-alive HTTP/1.1 connections, one request in flight on each.
    Http1,
    /// `--h2-clients` HTTP/2 connections, up to `--h2-streams` requests in flight on each.
    Http2,
}

/// Runs oha against `url` for the warm-up plus `--duration` seconds at `--rate` requests per
/// second over `protocol`'s connections, latency measured from each request's scheduled
/// start; requests still open at the end are waited for rather than cut off. A non-200
/// answer or an answer of the wrong size fails the run; requests that failed are missing
/// from oha's list, which shows as a rate below the offered one.
fn oha(args: &Args, oha: &Path, url: &str, protocol: OhaProtocol) -> anyhow::Result<Latency> {
    let mut command = Command::new(oha);
    command.args(["--no-tui", "--output-format", "csv"]);
    match protocol {
        OhaProtocol::Http1 => command.arg("-c").arg(args.connections.to_string()),
        OhaProtocol::Http2 => command
            .arg("--http2")
            .arg("-c")
            .arg(args.h2_clients.to_string())
            .arg("-p")
            .arg(args.h2_streams.to_string()),
    };
    let text = report_of(
        command
            .arg("-z")
            .arg(format!("{}s", WARM_UP_S + args.duration))
            .arg("-q")
            .arg(args.rate.to_string())
            .args([
                "--latency-correction",
                "--wait-ongoing-requests-after-deadline",
            ])
            // Both servers present leaves from test CAs.
            .arg("--insecure")
            .arg(url),
        &format!("oha {url}"),
    )?;
    parse_oha(&text, args.duration).with_context(|| {
        format!(
            "oha's request list for {url} (its layout is oha's own: `scripts/setup.sh --bench` \
             installs the version this bench reads)"
        )
    })
}

/// oha's CSV list of answered requests, one per line: start (seconds into the run), DNS,
/// DNS and connect, first byte, duration (seconds, from the scheduled start), body bytes,
/// status. The figures cover the requests that start after the warm-up.
fn parse_oha(text: &str, seconds: u32) -> anyhow::Result<Latency> {
    const HEADER: &str =
        "request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status";
    let mut lines = text.lines();
    ensure!(
        lines.next() == Some(HEADER),
        "the first line is not `{HEADER}`"
    );
    let mut durations = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let [start, _, _, _, duration, bytes, status] = fields[..] else {
            bail!("`{line}` does not have 7 fields");
        };
        let number = |field: &str| {
            field
                .parse::<f64>()
                .with_context(|| format!("`{field}` in `{line}` is not a number"))
        };
        ensure!(status == "200", "an answer had status {status}");
        ensure!(
            bytes == BODY_LEN.to_string(),
            "an answer had {bytes} body bytes, not {BODY_LEN}"
        );
        if number(start)? >= f64::from(WARM_UP_S) {
            durations.push(number(duration)? * 1e3);
        }
    }
    ensure!(
        !durations.is_empty(),
        "no requests completed after the warm-up"
    );
    durations.sort_unstable_by(f64::total_cmp);
    let percentile = |q: f64| quantile(&durations, q);
    #[expect(
        clippy::cast_precision_loss,
        reason = "a request count, far below 2^52"
    )]
    let rps = durations.len() as f64 / f64::from(seconds);
    Ok(Latency {
        rps,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        p999_ms: percentile(0.999),
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 (h2load)

/// Where each server serves h2 over TLS.
#[derive(Clone, Copy)]
struct H2Addrs {
    replayd: SocketAddr,
    nginx: SocketAddr,
}

impl H2Addrs {
    fn url(self, server: Server) -> String {
        let addr = match server {
            Server::Replayd => self.replayd,
            Server::Nginx => self.nginx,
        };
        format!("https://{addr}{PATH}")
    }
}

/// Whether an HTTP/2 run is h2load's closed loop or oha's fixed rate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum H2Load {
    Saturation,
    Rate,
}

/// The HTTP/2 runs: per round, saturation (h2load) then the fixed rate (oha), the servers
/// taking turns. Saturation latencies are from each request's sending, fixed-rate ones from
/// its scheduled start.
fn h2_runs(
    args: &Args,
    scratch: &Path,
    oha_bin: &Path,
    addrs: H2Addrs,
) -> anyhow::Result<Vec<(Server, H2Load, Latency)>> {
    eprintln!("xtask: warming up over h2");
    for server in [Server::Replayd, Server::Nginx] {
        h2load(args, scratch, &addrs.url(server), 1)
            .with_context(|| format!("warm-up of {} over h2", server.name()))?;
    }
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for load in [H2Load::Saturation, H2Load::Rate] {
            let order = if round % 2 == 0 {
                [Server::Replayd, Server::Nginx]
            } else {
                [Server::Nginx, Server::Replayd]
            };
            for server in order {
                let url = addrs.url(server);
                let sample = match load {
                    H2Load::Saturation => h2load(args, scratch, &url, args.duration),
                    H2Load::Rate => oha(args, oha_bin, &url, OhaProtocol::Http2),
                }
                .with_context(|| format!("measuring {} over h2", server.name()))?;
                println!(
                    "h2 {} {}/{}  {:<8} {:>10.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  \
                     p99.9 {:>6.3} ms",
                    if load == H2Load::Saturation {
                        "saturation"
                    } else {
                        "latency"
                    },
                    round + 1,
                    args.rounds,
                    server.name(),
                    sample.rps,
                    sample.p50_ms,
                    sample.p99_ms,
                    sample.p999_ms
                );
                runs.push((server, load, sample));
            }
        }
    }
    Ok(runs)
}

/// The HTTP/2 summary: medians over the rounds with their spread (min-max), and the verdict
/// on the targets, which every round must meet: a target missed in one round is missed.
fn h2_report(args: &Args, tools: &Tools, load: &str, runs: &[(Server, H2Load, Latency)]) -> String {
    let of = |server: Server, kind: H2Load| -> Vec<Latency> {
        runs.iter()
            .filter(|(s, k, _)| *s == server && *k == kind)
            .map(|(_, _, x)| *x)
            .collect()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "
replay over h2: {BODY_LEN}-byte JSON answer, TLS, {} connections x {} streams; saturation: \
         h2load {} (closed loop, latency from each request's sending); fixed rate: oha {} \
         --http2 (open loop, latency from each request's scheduled start); median [min-max] of \
         {} x {} s runs per row (after a {WARM_UP_S} s warm-up); load average as the runs \
         began: {load}",
        args.h2_clients,
        args.h2_streams,
        tools.h2load_version,
        tools.oha_version,
        args.rounds,
        args.duration
    );
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:>23} {:>20} {:>20} {:>9} {:>18}",
        "run", "server", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "vs nginx"
    );
    // Each round's ratio pairs the two servers' runs of that round.
    let ratios: Vec<f64> = of(Server::Replayd, H2Load::Saturation)
        .iter()
        .zip(of(Server::Nginx, H2Load::Saturation))
        .map(|(ours, theirs)| ours.rps / theirs.rps)
        .collect();
    let saturation_met = ratios.iter().all(|r| *r >= TARGET_RATIO);
    let mut latency_met = true;
    let mut sustained = true;
    for kind in [H2Load::Saturation, H2Load::Rate] {
        let run = match kind {
            H2Load::Saturation => "saturation".to_owned(),
            H2Load::Rate => format!("at {} req/s", args.rate),
        };
        for server in [Server::Replayd, Server::Nginx] {
            let samples = of(server, kind);
            let spread = |f: fn(&Latency) -> f64, decimals: usize| {
                spread(&samples.iter().map(f).collect::<Vec<_>>(), decimals)
            };
            let mut note = String::new();
            if kind == H2Load::Rate {
                let kept_up = samples
                    .iter()
                    .all(|s| s.rps >= SUSTAINED_SHARE * f64::from(args.rate));
                sustained &= kept_up;
                if server == Server::Replayd {
                    latency_met &= kept_up && samples.iter().all(|s| s.p99_ms < TARGET_P99_MS);
                }
                if !kept_up {
                    note.push_str("  (rate not sustained)");
                }
            }
            let vs = match (kind, server) {
                (H2Load::Saturation, Server::Replayd) => spread_of_ratios(&ratios),
                (H2Load::Saturation, Server::Nginx) => "1.00x".to_owned(),
                (H2Load::Rate, _) => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:>23} {:>20} {:>20} {:>9.3} {:>18}{note}",
                run,
                server.name(),
                spread(|x| x.rps, 0),
                spread(|x| x.p50_ms, 3),
                spread(|x| x.p99_ms, 3),
                median(samples.iter().map(|x| x.p999_ms).collect()),
                vs
            );
        }
    }
    if !sustained {
        let _ = writeln!(
            out,
            "a run achieved less than {:.0}% of the offered rate: its latencies are not at {} \
             req/s (try a lower --rate)",
            SUSTAINED_SHARE * 100.0,
            args.rate
        );
    }
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let _ = writeln!(
        out,
        "\ntarget, h2, in every round: saturation rate >= {TARGET_RATIO:.1}x nginx: {}; p99 < \
         {TARGET_P99_MS} ms at {} req/s: {}",
        verdict(saturation_met),
        args.rate,
        verdict(latency_met)
    );
    out
}

/// `median [min-max]` of `values`, with `decimals` decimals.
fn spread(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let median = median(values.to_vec());
    format!("{median:.decimals$} [{min:.decimals$}-{max:.decimals$}]")
}

/// The rounds' saturation ratios as `median [min-max]` followed by `x`.
fn spread_of_ratios(ratios: &[f64]) -> String {
    format!("{}x", spread(ratios, 2))
}

/// Both servers must answer over h2 with the recorded body before anything is measured: one
/// request each, its size checked by the DATA bytes h2load counts.
fn ensure_h2_answers(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    for addr in addrs {
        let url = format!("https://{addr}{PATH}");
        let text = report_of(
            Command::new("h2load").args(["-n1", "-c1", "-m1"]).arg(&url),
            &format!("h2load {url}"),
        )?;
        let summary = parse_h2load_summary(&text)
            .with_context(|| format!("h2load's report for {url}:\n{text}"))?;
        // h2load counts DATA bytes over the whole run, warm-up included, so they are checked
        // on this one request only.
        ensure!(
            summary.done == 1 && summary.data_bytes == BODY_LEN as u64,
            "{url} answered {} requests with {} body bytes over h2, not 1 with {BODY_LEN}",
            summary.done,
            summary.data_bytes
        );
        println!("h2       {url}: h2 by ALPN, 200 with {BODY_LEN} body bytes");
    }
    Ok(())
}

/// What h2load's summary says about a run.
#[derive(Debug, PartialEq)]
struct H2Summary {
    /// Requests answered 2xx in the measured duration.
    done: u64,
    /// Requests per second over the measured duration.
    rps: f64,
    /// DATA frame bytes received over the whole run, warm-up included.
    data_bytes: u64,
}

/// Checks h2load's summary: h2 negotiated by ALPN, at least one request, every one answered
/// 2xx.
fn parse_h2load_summary(text: &str) -> anyhow::Result<H2Summary> {
    let line = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("no `{prefix}` line"))
    };
    ensure!(
        line("Application protocol:")? == "h2",
        "the server did not pick h2 by ALPN"
    );
    // The figure just before `suffix` in `text`.
    let figure = |text: &str, suffix: &str| -> anyhow::Result<String> {
        let end = text
            .find(suffix)
            .with_context(|| format!("no `{suffix}` in `{text}`"))?;
        let start = text[..end].rfind([' ', '(']).map_or(0, |i| i + 1);
        Ok(text[start..end].to_owned())
    };
    let count = |text: &str, suffix: &str| -> anyhow::Result<u64> {
        let figure = figure(text, suffix)?;
        figure
            .parse()
            .with_context(|| format!("`{figure}` before `{suffix}` is not a count"))
    };
    let finished = line("finished in")?;
    let rps = figure(finished, " req/s")?;
    let rps: f64 = rps
        .parse()
        .with_context(|| format!("`{rps}` req/s is not a number"))?;
    let requests = line("requests:")?;
    for bad in [" failed", " errored", " timeout"] {
        ensure!(count(requests, bad)? == 0, "requests{bad}: `{requests}`");
    }
    // The status counts may include a few requests of the warm-up; only their absence counts.
    let statuses = line("status codes:")?;
    for status in [" 3xx", " 4xx", " 5xx"] {
        ensure!(
            count(statuses, status)? == 0,
            "not every answer was 2xx: `{statuses}`"
        );
    }
    let done = count(requests, " succeeded")?;
    ensure!(done > 0, "no request was answered");
    let data_bytes = count(line("traffic:")?, ") data")?;
    Ok(H2Summary {
        done,
        rps,
        data_bytes,
    })
}

/// Runs h2load against `url` for a warm-up plus `seconds`, a closed loop. Latencies come
/// from its per-request log, which holds the measured duration only.
fn h2load(args: &Args, scratch: &Path, url: &str, seconds: u32) -> anyhow::Result<Latency> {
    let log = scratch.join("h2load.log");
    let text = report_of(
        Command::new("h2load")
            .arg(format!("--clients={}", args.h2_clients))
            .arg(format!("--threads={}", args.threads))
            .arg(format!("--max-concurrent-streams={}", args.h2_streams))
            .arg(format!("--duration={seconds}"))
            .arg(format!("--warm-up-time={WARM_UP_S}"))
            .arg(format!("--log-file={}", log.display()))
            .arg(url),
        &format!("h2load {url}"),
    )?;
    let summary = parse_h2load_summary(&text)
        .with_context(|| format!("h2load's report for {url}:\n{text}"))?;
    let log_text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let mut durations = parse_h2load_log(&log_text)?;
    ensure!(!durations.is_empty(), "h2load logged no requests for {url}");
    durations.sort_unstable_by(f64::total_cmp);
    Ok(Latency {
        rps: summary.rps,
        p50_ms: quantile(&durations, 0.50),
        p99_ms: quantile(&durations, 0.99),
        p999_ms: quantile(&durations, 0.999),
    })
}

/// h2load's per-request log, one request per line: start (µs since the epoch), status,
/// duration (µs). Returns the durations in ms of the requests answered 200. Status 0 marks a
/// request still open when the run's time was up (failures show in the summary instead).
fn parse_h2load_log(text: &str) -> anyhow::Result<Vec<f64>> {
    let mut durations = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [_start, status, duration] = fields[..] else {
            bail!("`{line}` does not have 3 tab-separated fields");
        };
        if status == "0" {
            continue;
        }
        ensure!(status == "200", "an answer had status {status}");
        let micros: f64 = duration
            .parse()
            .with_context(|| format!("`{duration}` in `{line}` is not a number"))?;
        durations.push(micros / 1e3);
    }
    Ok(durations)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::{
        BODY_LEN, H2Summary, answer_body, latency_ms, parse_h2load_log, parse_h2load_summary,
        parse_oha, parse_wrk,
    };

    #[test]
    fn the_answer_is_one_kib_of_json() {
        let body = answer_body();
        assert_eq!(body.len(), BODY_LEN);
        assert!(body.starts_with(b"{\"object\":\"list\"") && body.ends_with(b"\"}"));
    }

    #[test]
    fn wrk_reports_parse() {
        let report = "Running 5s test @ http://127.0.0.1:8080/v1/models
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   530.12us  210.00us   9.87ms   90.00%
    Req/Sec    60.00k     2.00k   65.00k    70.00%
  Latency Distribution
     50%  480.00us
     75%  600.00us
     90%  800.00us
     99%    1.52ms
  600000 requests in 5.00s, 700.00MB read
Requests/sec: 120000.50
Transfer/sec:    140.00MB
";
        let s = parse_wrk(report).unwrap();
        assert!((s.rps - 120_000.5).abs() < 1e-6);
        assert!((s.p50_ms - 0.48).abs() < 1e-9);
        assert!((s.p99_ms - 1.52).abs() < 1e-9);
        let errors = report.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&errors).is_err());
        assert!((latency_ms("2.00s").unwrap() - 2000.0).abs() < 1e-9);
        assert!(latency_ms("7").is_err());
    }

    #[test]
    fn oha_request_lists_parse() {
        // 1000 answers a second for two seconds: the first second is the warm-up and is left
        // out, however slow; the second has latencies of 1..=1000 ms / 1000.
        let mut csv = "request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status\n"
            .to_owned();
        for i in 1..=1000 {
            writeln!(csv, "0.{i:03},0,0.03,0.05,0.05,1024,200").unwrap();
        }
        for i in 1..=1000 {
            let seconds = f64::from(i) / 1e6;
            writeln!(csv, "1.{:03},0,0,{seconds},{seconds},1024,200", i - 1).unwrap();
        }
        let l = parse_oha(&csv, 1).unwrap();
        assert!((l.rps - 1000.0).abs() < 1e-9);
        assert!((l.p50_ms - 0.501).abs() < 1e-9, "{}", l.p50_ms);
        assert!((l.p99_ms - 0.991).abs() < 1e-9, "{}", l.p99_ms);
        assert!((l.p999_ms - 1.0).abs() < 1e-9, "{}", l.p999_ms);

        let not_ok = csv.replacen(",1024,200\n1.", ",1024,404\n1.", 1);
        assert!(
            parse_oha(&not_ok, 1)
                .unwrap_err()
                .to_string()
                .contains("status 404")
        );
        let short = csv.replacen(",1024,200", ",18,200", 1);
        assert!(parse_oha(&short, 1).is_err());
        assert!(parse_oha("p99 1 ms", 1).is_err());
        let header_only = csv.lines().next().unwrap().to_owned();
        assert!(parse_oha(&header_only, 1).is_err());
    }

    #[test]
    fn h2load_reports_and_logs_parse() {
        let report = "TLS Protocol: TLSv1.3
Application protocol: h2
Warm-up phase is over for thread #0.

finished in 2.01s, 48054.00 req/s, 48.17MB/s
requests: 48054 total, 48054 started, 48054 done, 48054 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 48054 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 48.17MB (50504938) total, 794.28KB (813339) headers (space savings 89.88%), 88.18MB (92466176) data
                     min         max         mean         sd        +/- sd
time for request:       25us     20.84ms      1.26ms      1.77ms    91.40%
";
        assert_eq!(
            parse_h2load_summary(report).unwrap(),
            H2Summary {
                done: 48054,
                rps: 48054.0,
                data_bytes: 92_466_176
            }
        );
        let h1 = report.replace("protocol: h2", "protocol: http/1.1");
        assert!(
            parse_h2load_summary(&h1)
                .unwrap_err()
                .to_string()
                .contains("h2")
        );
        let failed = report.replace("0 failed", "3 failed");
        assert!(parse_h2load_summary(&failed).is_err());
        let not_2xx = report.replace("48054 2xx, 0 3xx, 0 4xx", "48054 2xx, 0 3xx, 4 4xx");
        assert!(parse_h2load_summary(&not_2xx).is_err());

        let log = "1796530328345236\t200\t3414\n1796530328345234\t200\t462\n";
        assert_eq!(parse_h2load_log(log).unwrap(), [3.414, 0.462]);
        assert!(parse_h2load_log("1\t401\t5\n").is_err());
        assert_eq!(parse_h2load_log("1\t0\t5\n2\t200\t1000\n").unwrap(), [1.0]);
        assert!(parse_h2load_log("1 200 5\n").is_err());
    }
}
