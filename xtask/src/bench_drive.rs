//! `cargo xtask bench drive`: the load driver's throughput (`llmsim-agent replay`, closed
//! loop) against nginx serving one fixed 1 KiB JSON answer over keep-alive HTTP/1.1, with
//! oha as the reference load generator on the same target in the same run. Both hold the
//! same number of connections for the same time; the driver also compares every answer
//! with the recorded one (the snapshot holds one inbound `GET /` and nginx's answer), as a
//! load test does. The generators take turns, the first alternating every round, so that
//! drift in the machine's speed hits both alike; the report gives medians over the rounds,
//! the driver's rate as a ratio of oha's, and each round's own ratio: the target (>= 0.8)
//! is met only when every round meets it. Each round also runs oha a second time, never
//! the reference: its rate over the first run's is the noise floor, the spread a round's
//! ratio shows between two runs of one generator. Each run's CPU time a request (its
//! process's user and system time, from `getrusage`) is reported too: how much work each
//! generator does for a request.
//!
//! Everything stays on loopback. The snapshot and nginx's configuration live in a
//! temporary directory that is removed afterwards; nginx is killed on the way out.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use clap::Parser;
use llmsim_tests::{TestCa, snapshot::write_exchanges};
use nix::sys::resource::{UsageWho, getrusage};
use serde_json::{Value, json};

use crate::bench_support::{
    Nginx, bench_tools, every_round, list_ratios, median, release_binary, report_of,
};

/// Size of the answer's body, in bytes.
const BODY_LEN: usize = 1024;
/// The driver's throughput as a share of oha's that the bench aims for.
const TARGET_RATIO: f64 = 0.8;

#[derive(Parser)]
#[command(
    name = "cargo xtask bench drive",
    about = "the load driver against oha, both saturating nginx serving a 1 KiB JSON answer"
)]
struct Args {
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Rounds; every round runs each generator once. The report shows medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keep-alive connections each generator holds open.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Use the release binary as it is instead of building it first.
    #[arg(long)]
    no_build: bool,
}

/// The answer nginx serves and the snapshot records: a JSON object of [`BODY_LEN`] bytes.
fn body() -> String {
    let skeleton = json!({"id": "drive-bench", "answer": ""}).to_string();
    json!({"id": "drive-bench", "answer": "x".repeat(BODY_LEN - skeleton.len())}).to_string()
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let args = Args::try_parse_from(
        std::iter::once("cargo xtask bench drive".to_owned()).chain(args.iter().cloned()),
    )?;
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.duration > 0, "--duration must be at least 1 second");
    ensure!(args.connections > 0, "--connections must be at least 1");
    let [nginx_bin, oha] = bench_tools(["nginx", "oha"])?;
    let agent = release_binary("llmsim-agent", "llmsim-agent", !args.no_build)?;
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let body = body();
    ensure!(body.len() == BODY_LEN, "the answer is {} bytes", body.len());
    let ca = TestCa::new();
    let nginx = Nginx::start(&nginx_bin, scratch.path(), body.as_bytes(), &ca)?;
    let snapshot = scratch.path().join("snapshot");
    write_exchanges(
        &snapshot,
        [json!({
            "direction": "inbound",
            "request": {"method": "GET", "path": "/", "headers": [], "body": {"kind": "empty"}},
            "response": {
                "status": 200,
                "headers": [["Content-Type", "application/json"]],
                "body": {"kind": "json", "json": serde_json::from_str::<Value>(&body)?},
            },
        })],
    );
    let url = format!("http://{}/", nginx.http);
    let oha_version = report_of(Command::new(&oha).arg("--version"), "oha --version")?;
    let (mut driver_rates, mut oha_rates, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let (mut driver_cpu, mut oha_cpu) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // The generators' order turns every round; the second oha run measures the
        // noise floor and is never the reference.
        let mut turns = [Turn::Driver, Turn::Oha, Turn::OhaAgain];
        turns.rotate_left(round % 2);
        let mut runs = [(0.0, 0.0); 3];
        for turn in turns {
            let before = children_cpu()?;
            let rate = match turn {
                Turn::Driver => driver_rate(&args, &agent, &url, &snapshot)?,
                Turn::Oha | Turn::OhaAgain => oha_rate(&args, &oha, &url)?,
            };
            let cpu_us = children_cpu()?.saturating_sub(before).as_secs_f64() * 1e6
                / (rate * f64::from(args.duration)).max(1.0);
            println!(
                "round {}/{}  {:<20} {rate:>10.0} req/s  {cpu_us:>6.2} us CPU a request",
                round + 1,
                args.rounds,
                turn.name()
            );
            runs[turn as usize] = (rate, cpu_us);
        }
        driver_rates.push(runs[Turn::Driver as usize].0);
        oha_rates.push(runs[Turn::Oha as usize].0);
        floor.push(runs[Turn::OhaAgain as usize].0 / runs[Turn::Oha as usize].0);
        driver_cpu.push(runs[Turn::Driver as usize].1);
        oha_cpu.push(runs[Turn::Oha as usize].1);
    }
    drop(nginx);
    // Each round's ratio, from the two runs that took turns in it.
    let ratios: Vec<f64> = driver_rates
        .iter()
        .zip(&oha_rates)
        .map(|(driver, oha)| driver / oha)
        .collect();
    let (driver, reference) = (median(driver_rates), median(oha_rates));
    let ratio = driver / reference;
    println!(
        "\nsaturating nginx (1 KiB JSON, {} connections, {} s per run, median of {} rounds):",
        args.connections, args.duration, args.rounds
    );
    println!("  llmsim-agent replay  {driver:>10.0} req/s (every answer compared)");
    println!("  {:<20} {reference:>10.0} req/s", oha_version.trim());
    let (listed, verdict) = every_round(&ratios, TARGET_RATIO);
    println!(
        "  ratio {ratio:.2}x oha by the medians; rounds: {listed} (target >= {TARGET_RATIO}x): {verdict}"
    );
    println!(
        "  noise floor, oha against itself in the same rounds: {}",
        list_ratios(&floor)
    );
    let (driver_cpu, oha_cpu) = (median(driver_cpu), median(oha_cpu));
    println!(
        "  CPU a request (user + system), medians: llmsim-agent replay {driver_cpu:.2} us, \
         oha {oha_cpu:.2} us ({:.2}x)",
        driver_cpu / oha_cpu
    );
    Ok(())
}

/// The CPU time (user and system) of this process's children that have been waited for:
/// taken before and after a generator's run, what the run used.
fn children_cpu() -> anyhow::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Ok(time(usage.user_time()) + time(usage.system_time()))
}

/// One generator's turn in a round.
#[derive(Clone, Copy)]
enum Turn {
    Driver,
    Oha,
    /// oha once more, against the first: how far apart two runs of one generator fall.
    OhaAgain,
}

impl Turn {
    fn name(self) -> &'static str {
        match self {
            Self::Driver => "llmsim-agent replay",
            Self::Oha => "oha",
            Self::OhaAgain => "oha (again)",
        }
    }
}

/// The driver's throughput: a closed loop of `--connections` for `--duration`, every
/// answer compared with the recorded one, none of them allowed to differ.
fn driver_rate(args: &Args, agent: &Path, url: &str, snapshot: &Path) -> anyhow::Result<f64> {
    let text = report_of(
        Command::new(agent)
            .arg("replay")
            .args(["--target", url])
            .args(["--concurrency", &args.connections.to_string()])
            .args(["--duration", &format!("{}s", args.duration)])
            .arg("--json")
            .arg(snapshot),
        "llmsim-agent replay",
    )?;
    let summary: Value = serde_json::from_str(text.trim()).context("the driver's --json")?;
    ensure!(
        summary["requests"].as_u64().is_some_and(|n| n > 0) && summary["ok"] == summary["requests"],
        "the driver saw differences or errors: {summary}"
    );
    summary["throughput_rps"]
        .as_f64()
        .context("no throughput_rps in the driver's summary")
}

/// oha's throughput with the same connections for the same time.
fn oha_rate(args: &Args, oha: &Path, url: &str) -> anyhow::Result<f64> {
    let text = report_of(
        Command::new(oha)
            .args(["--no-tui", "--output-format", "json"])
            .args(["-c", &args.connections.to_string()])
            .args(["-z", &format!("{}s", args.duration)])
            .arg(url),
        "oha",
    )?;
    let summary: Value = serde_json::from_str(&text).context("oha's JSON output")?;
    ensure!(
        summary["summary"]["successRate"].as_f64() == Some(1.0),
        "oha saw failures: {}",
        summary["summary"]
    );
    summary["summary"]["requestsPerSec"]
        .as_f64()
        .context("no summary.requestsPerSec in oha's output")
}
