//! `cargo xtask bench pacing`: how closely replayd's `--pace recorded` keeps a recorded
//! stream's timing under load. One recorded server-sent-event stream (events at a fixed
//! spacing) is fetched by `--streams` clients at once (2,000 by default), each over its own
//! plain HTTP/1.1 connection on loopback, their starts spread evenly over one spacing so
//! the events fall due at a steady rate rather than all in the same instant; and this
//! `--rounds` times. Each event's arrival is compared with its recorded offset, counted
//! from just before its request was written, as an app would see it. An event may never
//! arrive early; the target is that 99% arrive within 2 ms of their offset. The clients
//! are threads blocked in `read`, so the figures include the client's own wake-ups on the
//! same two cores.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use clap::Parser;
use llmsim_tests::paced_stream::{StreamFetch, write_stream_snapshot};

use crate::bench_support::{Replayd, quantile, release_binary};

/// How late an event may arrive.
const TARGET_LATE_MS: f64 = 2.0;

#[derive(Parser)]
#[command(
    name = "cargo xtask bench pacing",
    about = "how closely replayd --pace recorded keeps recorded event offsets with many \
             concurrent streams"
)]
struct Args {
    /// Events in the recorded stream.
    #[arg(long, default_value_t = 20)]
    events: u32,
    /// Milliseconds between recorded events.
    #[arg(long, default_value_t = 100.0)]
    spacing_ms: f64,
    /// Streams fetched at once.
    #[arg(long, default_value_t = 2000)]
    streams: usize,
    /// Times the streams are fetched.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Use the replayd already in target/release instead of building it first.
    #[arg(long)]
    no_build: bool,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let args = Args::try_parse_from(
        std::iter::once("cargo xtask bench pacing".to_owned()).chain(args.iter().cloned()),
    )?;
    ensure!(
        args.events > 0 && args.rounds > 0 && args.streams > 0,
        "--events, --streams and --rounds must be at least 1"
    );
    ensure!(args.spacing_ms >= 0.0, "--spacing-ms must not be negative");
    let replayd_bin = release_binary("llmsim-replayd", "replayd", !args.no_build)?;
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let offsets: Vec<f64> = (0..args.events)
        .map(|i| f64::from(i + 1) * args.spacing_ms)
        .collect();
    let snapshot = scratch.path().join("snapshot");
    write_stream_snapshot(&snapshot, &offsets);
    let mut replayd = Replayd::start(
        &replayd_bin,
        &snapshot,
        &scratch.path().join("replayd-ca"),
        "recorded",
    )?;

    let mut late_ms = Vec::new();
    for _ in 0..args.rounds {
        for arrivals in fetch_concurrently(replayd.addr, &args, offsets.len())? {
            for (at, offset) in arrivals.iter().zip(&offsets) {
                let late = at.as_secs_f64() * 1e3 - offset;
                ensure!(
                    late >= 0.0,
                    "an event recorded at {offset} ms arrived {:.3} ms early",
                    -late
                );
                late_ms.push(late);
            }
        }
    }
    replayd.child.check_alive()?;

    late_ms.sort_by(f64::total_cmp);
    let [earliest, p50, p99, max] = [0.0, 0.5, 0.99, 1.0].map(|q| quantile(&late_ms, q));
    println!(
        "\npacing: {} concurrent streams of {} events {} ms apart, {} round(s), {} events; \
         lateness after each recorded offset, counted from before the request was written",
        args.streams,
        args.events,
        args.spacing_ms,
        args.rounds,
        late_ms.len()
    );
    println!("  early    none");
    println!("  least    {earliest:.3} ms");
    println!("  p50      {p50:.3} ms");
    println!("  p99      {p99:.3} ms");
    println!("  max      {max:.3} ms");
    let within = late_ms.iter().filter(|l| **l <= TARGET_LATE_MS).count();
    #[expect(
        clippy::cast_precision_loss,
        reason = "event counts are far below 2^52"
    )]
    let share = within as f64 * 100.0 / late_ms.len() as f64;
    println!("  within {TARGET_LATE_MS} ms: {share:.2}%");
    println!(
        "\ntarget: p99 within {TARGET_LATE_MS} ms of its offset, none early: {}",
        if p99 <= TARGET_LATE_MS {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

/// Fetches the stream on `args.streams` connections at once, their requests spread evenly
/// over one event spacing; each stream's event arrivals.
fn fetch_concurrently(
    addr: SocketAddr,
    args: &Args,
    count: usize,
) -> anyhow::Result<Vec<Vec<Duration>>> {
    let connected = Arc::new(Barrier::new(args.streams + 1));
    #[expect(
        clippy::cast_precision_loss,
        reason = "stream counts are far below 2^52"
    )]
    let stagger = Duration::from_secs_f64(args.spacing_ms / 1e3 / args.streams as f64);
    let mut clients = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let connected = Arc::clone(&connected);
        let client = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || -> anyhow::Result<Vec<Duration>> {
                let stream = TcpStream::connect(addr);
                // Every client waits here, connected or not, so the start is shared.
                connected.wait();
                let stream = stream.with_context(|| format!("connecting to {addr}"))?;
                let at = Instant::now() + stagger * u32::try_from(i).unwrap_or(u32::MAX);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                StreamFetch::start(stream, addr)
                    .and_then(|fetch| fetch.arrivals(count))
                    .context("fetching the stream")
            })
            .context("starting a client thread")?;
        clients.push(client);
    }
    connected.wait();
    clients
        .into_iter()
        .map(|client| {
            client
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
        })
        .collect()
}
