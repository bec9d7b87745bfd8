//! `cargo xtask bench pacing`: how closely replayd's `--pace recorded` keeps a recorded
//! stream's timing under load. One recorded server-sent-event stream (events at a fixed
//! spacing) is fetched by `--streams` clients at once (2,000 by default), each over its own
//! plain HTTP/1.1 connection on loopback, their starts spread evenly over one spacing so
//! the events fall due at a steady rate rather than all in the same instant; and this
//! `--rounds` times. Each event's arrival is compared with its recorded offset, counted
//! from just before its request was written, as an app would see it. Arrival is when the
//! event reached the client's socket, by the kernel's receive timestamp (`SO_TIMESTAMPNS`):
//! on loopback, the instant replayd wrote it. An event may never arrive early; the target
//! is that 99% arrive within 2 ms of their offset. When the client thread read each event
//! is reported too: the clients are 2,000 threads blocked in `recvmsg` on the same two
//! cores, so that figure adds their own wake-ups, which are not replayd's pacing. A read
//! that takes in several events gives them all the timestamp of its last segment, which
//! can only make an event look later.

use std::{
    io::{self, IoSliceMut},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    sync::{Arc, Barrier},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, ensure};
use clap::Parser;
use llmsim_tests::paced_stream::{StreamFetch, write_stream_snapshot};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;

use crate::bench_support::{Replayd, quantile, release_binary};

/// How late an event may arrive.
const TARGET_LATE_MS: f64 = 2.0;
/// How long after the shared start the first request goes out: the 2,000 client threads
/// all wake from the barrier at that start and take the cores for a few milliseconds,
/// which would delay replayd's reading of the first requests, and so every event of
/// their streams.
const SETTLE: Duration = Duration::from_millis(200);

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

    // How late each event was: on the socket, and when read.
    let mut queued_ms = Vec::new();
    let mut read_ms = Vec::new();
    for _ in 0..args.rounds {
        for arrivals in fetch_concurrently(replayd.addr, &args, offsets.len())? {
            for (at, offset) in arrivals.iter().zip(&offsets) {
                let late = |after: Duration| after.as_secs_f64() * 1e3 - offset;
                let queued = late(at.queued);
                ensure!(
                    queued >= 0.0,
                    "an event recorded at {offset} ms arrived {:.3} ms early",
                    -queued
                );
                queued_ms.push(queued);
                read_ms.push(late(at.read));
            }
        }
    }
    replayd.child.check_alive()?;

    println!(
        "\npacing: {} concurrent streams of {} events {} ms apart, {} round(s), {} events; \
         lateness after each recorded offset, counted from before the request was written",
        args.streams,
        args.events,
        args.spacing_ms,
        args.rounds,
        queued_ms.len()
    );
    println!("             on the socket   read by the client");
    println!("  early      none            none");
    queued_ms.sort_by(f64::total_cmp);
    read_ms.sort_by(f64::total_cmp);
    for (name, q) in [("least", 0.0), ("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "  {name:<8} {:>8.3} ms     {:>8.3} ms",
            quantile(&queued_ms, q),
            quantile(&read_ms, q)
        );
    }
    let share = |late: &[f64]| {
        let within = late.iter().filter(|l| **l <= TARGET_LATE_MS).count();
        #[expect(
            clippy::cast_precision_loss,
            reason = "event counts are far below 2^52"
        )]
        let share = within as f64 * 100.0 / late.len() as f64;
        share
    };
    println!(
        "  within {TARGET_LATE_MS} ms {:>7.2}%        {:>7.2}%",
        share(&queued_ms),
        share(&read_ms)
    );
    let p99 = quantile(&queued_ms, 0.99);
    println!(
        "\ntarget: p99 within {TARGET_LATE_MS} ms of its offset on the socket, none early: {}",
        if p99 <= TARGET_LATE_MS {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

/// When an event arrived, after its request was sent.
#[derive(Clone, Copy)]
struct Arrival {
    /// On the client's socket (the kernel's receive timestamp).
    queued: Duration,
    /// When the client thread read it.
    read: Duration,
}

/// Reads what has arrived on `stream` into `buf`, and tells when it reached the socket
/// (the receive timestamp of the last segment read, taken from the real-time clock and
/// put on the monotonic one by [`clock_pair`]) and when it was read. With no timestamp,
/// the read's own instant stands for both.
fn timestamped_read(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<(usize, [Instant; 2])> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(TimeSpec);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    let (read, wall) = clock_pair();
    let mut queued = read;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(stamp) = cmsg {
            let stamp = Duration::from(stamp);
            queued = read.checked_sub(wall.saturating_sub(stamp)).unwrap_or(read);
        }
    }
    Ok((msg.bytes, [queued, read]))
}

/// How many times [`clock_pair`] reads the clocks, keeping the closest pair.
const CLOCK_PAIR_TRIES: usize = 3;

/// The real-time clock's reading (since the epoch) and a monotonic instant taken just after
/// it: the closest of [`CLOCK_PAIR_TRIES`] pairs, each the wall clock between two monotonic
/// readings. The later monotonic reading is the one kept, so a timestamp put on the
/// monotonic clock through the pair can only come out later than it was, by the gap,
/// never earlier. A thread preempted between the two reads (2,000 client threads share two
/// cores) widened that gap to tens of microseconds; read the other way round, the
/// monotonic clock first, such a gap made an event look that much early.
fn clock_pair() -> (Instant, Duration) {
    let mut closest: Option<(Duration, Instant, Duration)> = None;
    for _ in 0..CLOCK_PAIR_TRIES {
        let before = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let after = Instant::now();
        let gap = after - before;
        if closest.is_none_or(|(best, ..)| gap < best) {
            closest = Some((gap, after, wall));
        }
    }
    let (_, after, wall) = closest.expect("at least one try");
    (after, wall)
}

/// Fetches the stream on `args.streams` connections at once, their requests spread evenly
/// over one event spacing; each stream's event arrivals. The client threads end together
/// once every stream has: 2,000 threads exiting as their own streams end would take the
/// cores from replayd while it still paces the others (the last event of each stream came
/// out 5 ms late at the median that way).
fn fetch_concurrently(
    addr: SocketAddr,
    args: &Args,
    count: usize,
) -> anyhow::Result<Vec<Vec<Arrival>>> {
    let connected = Arc::new(Barrier::new(args.streams + 1));
    let finished = Arc::new(Barrier::new(args.streams + 1));
    #[expect(
        clippy::cast_precision_loss,
        reason = "stream counts are far below 2^52"
    )]
    let stagger = Duration::from_secs_f64(args.spacing_ms / 1e3 / args.streams as f64);
    let mut clients = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let connected = Arc::clone(&connected);
        let finished = Arc::clone(&finished);
        let delay = SETTLE + stagger * u32::try_from(i).unwrap_or(u32::MAX);
        let client = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || -> anyhow::Result<Vec<Arrival>> {
                let stream = TcpStream::connect(addr);
                // Every client waits here, connected or not, so the start is shared.
                connected.wait();
                let arrivals = stream
                    .with_context(|| format!("connecting to {addr}"))
                    .and_then(|stream| fetch_one(stream, addr, Instant::now() + delay, count));
                finished.wait();
                arrivals
            })
            .context("starting a client thread")?;
        clients.push(client);
    }
    connected.wait();
    finished.wait();
    clients
        .into_iter()
        .map(|client| {
            client
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
        })
        .collect()
}

/// Sends the request on `stream` at `start` and reads the `count` events of the answer.
fn fetch_one(
    stream: TcpStream,
    addr: SocketAddr,
    start: Instant,
    count: usize,
) -> anyhow::Result<Vec<Arrival>> {
    setsockopt(&stream, sockopt::ReceiveTimestampns, &true)
        .context("asking for receive timestamps (SO_TIMESTAMPNS)")?;
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let fetch = StreamFetch::start(stream, addr).context("sending the request")?;
    let sent = fetch.sent;
    let arrivals = fetch
        .arrivals_as(count, timestamped_read)
        .context("fetching the stream")?;
    Ok(arrivals
        .into_iter()
        .map(|[queued, read]| Arrival {
            queued: queued.saturating_duration_since(sent),
            read: read.saturating_duration_since(sent),
        })
        .collect())
}
