//! `cargo xtask bench pacing`: how closely replayd's `--pace recorded` keeps a recorded
//! stream's timing under load. One recorded server-sent-event stream (events at a fixed
//! spacing) is fetched by `--streams` clients at once (2,000 by default), each over its own
//! plain HTTP/1.1 connection on loopback, their starts spread evenly over one spacing so
//! the events fall due at a steady rate rather than all in the same instant; and this
//! `--rounds` times. Each event's arrival is compared with its recorded offset, counted
//! from just before its request was written, as an app would see it. Arrival is when the
//! event reached the client's socket, by the kernel's receive timestamp (`SO_TIMESTAMPNS`):
//! on loopback, the instant replayd wrote it. An event may never arrive early; the target
//! is that 99% arrive within 2 ms of their offset. The client is built as a load generator
//! is: one thread writes the requests, one reads every connection as it becomes readable.
//! When that thread read each event is reported too, for information: it adds the client's
//! own wake-ups, which are not replayd's pacing. A read that takes in several events gives
//! them all the timestamp of its last segment, which can only make an event look later.

use std::{
    io::{IoSliceMut, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, ensure};
use clap::Parser;
use llmsim_tests::paced_stream::{EndedEvents, stream_request, write_stream_snapshot};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;

use crate::bench_support::{Replayd, quantile, release_binary};

/// How late an event may arrive.
const TARGET_LATE_MS: f64 = 2.0;
/// How long after the connections are open the first request goes out, so that
/// replayd has set every connection up before it paces anything.
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
    /// When the client's reading thread read it.
    read: Duration,
}

/// Reads what has arrived on `stream` into `buf` without waiting, and tells when it reached
/// the socket (the receive timestamp of the last segment read, taken from the real-time
/// clock and put on the monotonic one by [`clock_pair`]) and when it was read. With no
/// timestamp, the read's own instant stands for both. `EAGAIN` when nothing has arrived.
fn timestamped_read(stream: &TcpStream, buf: &mut [u8]) -> nix::Result<(usize, [Instant; 2])> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(TimeSpec);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT,
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
/// never earlier. A thread preempted between the two reads (2,000 client threads shared two
/// cores once) widened that gap to tens of microseconds; read the other way round, the
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

/// How long the reading thread waits for any connection to have something before it
/// gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches the stream on `args.streams` connections at once, their requests spread evenly
/// over one event spacing; each stream's event arrivals. The client is built as a load
/// generator is: this thread writes each request at its instant, and one thread reads
/// every connection as it becomes readable (epoll). It used to be a thread per stream,
/// and those 2,000 threads, each woken for each of its events, took the cores from
/// replayd at the very instants it paced events.
fn fetch_concurrently(
    addr: SocketAddr,
    args: &Args,
    count: usize,
) -> anyhow::Result<Vec<Vec<Arrival>>> {
    let streams = (0..args.streams)
        .map(|_| {
            let stream =
                TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            setsockopt(&stream, sockopt::ReceiveTimestampns, &true)
                .context("asking for receive timestamps (SO_TIMESTAMPNS)")?;
            Ok(stream)
        })
        .collect::<anyhow::Result<Arc<[TcpStream]>>>()?;
    let reading = {
        let streams = Arc::clone(&streams);
        std::thread::Builder::new()
            .spawn(move || read_events(&streams, count))
            .context("starting the reading thread")?
    };
    #[expect(
        clippy::cast_precision_loss,
        reason = "stream counts are far below 2^52"
    )]
    let stagger = Duration::from_secs_f64(args.spacing_ms / 1e3 / args.streams as f64);
    let first = Instant::now() + SETTLE;
    let request = stream_request(addr);
    let mut sent = Vec::with_capacity(streams.len());
    for (i, mut stream) in streams.iter().enumerate() {
        let start = first + stagger * u32::try_from(i).unwrap_or(u32::MAX);
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        sent.push(Instant::now());
        stream
            .write_all(request.as_bytes())
            .context("sending the request")?;
    }
    let read = reading
        .join()
        .map_err(|_| anyhow::anyhow!("the reading thread panicked"))??;
    Ok(read
        .into_iter()
        .zip(sent)
        .map(|(arrivals, sent)| {
            arrivals
                .into_iter()
                .map(|[queued, read]| Arrival {
                    queued: queued.saturating_duration_since(sent),
                    read: read.saturating_duration_since(sent),
                })
                .collect()
        })
        .collect())
}

/// Reads every connection of `streams` as it becomes readable until each has delivered
/// `count` events; for each, when each event reached the socket and when it was read.
fn read_events(streams: &[TcpStream], count: usize) -> anyhow::Result<Vec<Vec<[Instant; 2]>>> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("creating an epoll")?;
    for (i, stream) in streams.iter().enumerate() {
        epoll
            .add(stream, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .context("watching a connection")?;
    }
    let mut ended = vec![EndedEvents::default(); streams.len()];
    let mut arrivals: Vec<Vec<[Instant; 2]>> = vec![Vec::with_capacity(count); streams.len()];
    let mut unfinished = streams.len();
    let mut ready = vec![EpollEvent::empty(); 256];
    let mut buf = [0u8; 16 * 1024];
    let timeout = EpollTimeout::try_from(READ_TIMEOUT).context("the read timeout")?;
    while unfinished > 0 {
        let n = epoll
            .wait(&mut ready, timeout)
            .context("waiting for events")?;
        ensure!(
            n > 0,
            "no connection delivered anything for {READ_TIMEOUT:?}, with {unfinished} streams unfinished"
        );
        for event in &ready[..n] {
            let i = usize::try_from(event.data()).context("a connection's index")?;
            while arrivals[i].len() < count {
                let (read, at) = match timestamped_read(&streams[i], &mut buf) {
                    Ok(read) => read,
                    Err(Errno::EAGAIN) => break,
                    Err(e) => return Err(e).context("reading a stream"),
                };
                ensure!(
                    read > 0,
                    "a stream ended after {} of {count} events",
                    arrivals[i].len()
                );
                arrivals[i].resize(ended[i].feed(&buf[..read]), at);
                if arrivals[i].len() >= count {
                    epoll
                        .delete(&streams[i])
                        .context("unwatching a connection")?;
                    unfinished -= 1;
                }
            }
        }
    }
    Ok(arrivals)
}
