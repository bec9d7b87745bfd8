//! `cargo xtask bench capture --only go`: what attaching the agent costs a Go
//! client. A client written with Go's standard library only
//! (`bench_capture/go_loop.go`, built here with Debian's `golang-go`, offline,
//! as the tests build theirs) makes REQUESTS GET requests over one keep-alive
//! HTTP/1.1 connection (`net/http` over `crypto/tls`) for the 1 KiB answer of
//! the bench's nginx, without the agent, under `--pid` and under `-- CMD` (the
//! host filter dropping every exchange, as in the curl loop). The method is the
//! curl loop's: the client waits on stdin until the agent is attached, the time
//! of a run is the sum of the client's own per-request times, every round runs
//! each mode once in a fresh random order after a warm-up run, client and nginx
//! pinned to CPUs of their own, and the ratios are taken per round. Each
//! attached run must have seen every answer's bytes (the agent's plaintext
//! count), so a run whose probes missed reads is an error, not a fast figure.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use llmsim_tests::TestCa;

use super::{
    AgentSummary, BODY_BYTES, CLIENT_CPU, Mode, SERVER_CPU, Sample, Shuffle, body, mode_columns,
    round_line, run_in_mode,
};
use crate::bench_support::Nginx;

/// The client's source.
const SOURCE: &str = include_str!("go_loop.go");
/// The modes measured, the baseline first.
const MODES: [Mode; 3] = [Mode::Baseline, Mode::Pid, Mode::Command];

/// Builds the client, starts nginx and runs `rounds` rounds of the loop.
pub fn run(
    agent: &Path,
    nginx: &Path,
    taskset: Option<&PathBuf>,
    requests: u32,
    rounds: u32,
    order: &mut Shuffle,
) -> anyhow::Result<()> {
    let ca = TestCa::new();
    let work = ca.dir().to_path_buf();
    let (client, version) = build(&work)?;
    let server = Nginx::start_on(
        nginx,
        &work,
        body().as_bytes(),
        &ca,
        taskset.is_some().then_some(SERVER_CPU),
    )?;
    let client = GoClient {
        argv: match taskset {
            Some(taskset) => vec![
                taskset.clone().into_os_string(),
                "-c".into(),
                CLIENT_CPU.to_string().into(),
                client.into_os_string(),
            ],
            None => vec![client.into_os_string()],
        },
        url: format!("https://{}/x", server.https),
        out: work.join("go-loop-result"),
    };
    println!(
        "\nGo client: {requests} keep-alive HTTPS requests per run (net/http, crypto/tls, \
         HTTP/1.1, {version} -> nginx, {BODY_BYTES}-byte body, loopback), {rounds} rounds of {} \
         runs in random order{}\n",
        MODES.len(),
        if taskset.is_some() {
            format!(", client on CPU {CLIENT_CPU}, nginx on CPU {SERVER_CPU}")
        } else {
            String::from(", unpinned (one CPU)")
        }
    );
    client.run(agent, Mode::Baseline, requests / 5 + 1)?;
    let mut rates: Vec<Vec<f64>> = MODES.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for i in order.permutation(MODES.len()) {
            let sample = client.run(agent, MODES[i], requests)?;
            println!("{}", round_line(round, "Go", MODES[i], &sample));
            rates[i].push(sample.requests_per_second);
        }
    }
    drop(server);
    println!(
        "\n{:<34} {:>8} {:>13} {:>7} {:>9} {:>13} {:>11}",
        "Go HTTP/1.1, median of each",
        "req/s",
        "runs (req/s)",
        "spread",
        "x slower",
        "per round",
        "+us/request"
    );
    for (mode, runs) in MODES.iter().zip(&rates) {
        println!("{}", mode_columns(*mode, &rates[0], runs).0);
    }
    println!(
        "x slower: median over rounds of (baseline / mode) within a round; per round: its range. \
         +us/request: median over rounds of (1/mode - 1/baseline) within a round.\n\
         target: at most 1.10x slower"
    );
    Ok(())
}

/// Builds the client into `work` with Debian's `golang-go`, offline, in a Go
/// cache of its own; the path of the binary and `go version`'s version.
fn build(work: &Path) -> anyhow::Result<(PathBuf, String)> {
    let source = work.join("go-loop");
    fs::create_dir_all(&source).context("creating the Go client's directory")?;
    fs::write(source.join("main.go"), SOURCE).context("writing the Go client")?;
    fs::write(source.join("go.mod"), "module llmsim/bench/go\n\ngo 1.19\n")
        .context("writing the Go client's go.mod")?;
    let binary = work.join("llmsim-bench-go");
    let go = |args: &[&str]| {
        let mut command = Command::new("go");
        command
            .args(args)
            .current_dir(&source)
            .env("GOCACHE", work.join("go-cache"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0");
        command
    };
    let status = go(&["build", "-trimpath", "-o"])
        .arg(&binary)
        .arg(".")
        .status()
        .context("running go build (scripts/setup.sh installs golang-go)")?;
    ensure!(
        status.success(),
        "go build of the bench's Go client failed ({status})"
    );
    let version = go(&["version"]).output().context("running go version")?;
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version.split_whitespace().nth(2).unwrap_or("go").to_owned();
    Ok((binary, version))
}

struct GoClient {
    /// The client's command, under `taskset -c CPU` when pinned, without its arguments.
    argv: Vec<OsString>,
    /// The URL without the request counter.
    url: String,
    /// Where the client writes its result line.
    out: PathBuf,
}

impl GoClient {
    /// One loop of `requests` requests in `mode` (baseline, `--pid` or `-- CMD`).
    fn run(&self, agent: &Path, mode: Mode, requests: u32) -> anyhow::Result<Sample> {
        let mut argv = self.argv.clone();
        argv.extend([
            self.url.clone().into(),
            requests.to_string().into(),
            self.out.clone().into_os_string(),
        ]);
        let _ = fs::remove_file(&self.out);
        let summary = run_in_mode(
            agent,
            mode,
            &argv,
            &self.out.with_extension("capture"),
            "Go",
        )?;
        let line = fs::read_to_string(&self.out).context("reading the Go loop's result")?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [seconds, connections, bytes] = fields[..] else {
            anyhow::bail!("the Go loop wrote {line:?}, not `SECONDS CONNECTIONS BYTES`");
        };
        let seconds: f64 = seconds.parse().context("the Go loop's seconds")?;
        ensure!(
            connections == "1",
            "the Go loop opened {connections} connections, not one keep-alive connection"
        );
        let expected = u64::from(requests) * BODY_BYTES as u64;
        ensure!(
            bytes == expected.to_string(),
            "the Go loop read {bytes} body bytes, not {expected}"
        );
        if let Some(summary) = &summary {
            check_seen(summary, expected)?;
        }
        Ok(Sample {
            requests_per_second: f64::from(requests) / seconds,
            summary,
        })
    }
}

/// An attached run must have had at least every answer's body in plaintext, read by the
/// agent or skipped by the kernel (the loop's host is not recorded, so once the agent has
/// read its first exchange the kernel skips the rest), with no event dropped.
fn check_seen(summary: &AgentSummary, bodies: u64) -> anyhow::Result<()> {
    let had = summary.plaintext_bytes + summary.skipped_bytes;
    ensure!(
        had >= bodies && summary.dropped == 0,
        "the agent saw {} plaintext bytes and the kernel skipped {} ({} events dropped) of a \
         loop whose bodies alone are {bodies} bytes",
        summary.plaintext_bytes,
        summary.skipped_bytes,
        summary.dropped
    );
    Ok(())
}
