//! A wall-clock jump during pacing changes nothing: while `replayd --pace recorded` streams a
//! recorded answer, `CLOCK_REALTIME` is set an hour ahead, then an hour behind where it
//! started, and still every event arrives within the pacing tolerance of its recorded offset
//! and none early, because replayd times events on the monotonic clock.
//!
//! Setting the clock would disturb every other test on the machine, and a time namespace
//! offsets only the monotonic and boot-time clocks, never the real-time one
//! (`time_namespaces(7)`), so the jump happens only inside a disposable guest of the kernel
//! matrix, which has a clock of its own. On the host the test runs itself there, through
//! `cargo xtask kernels --kernel 6.12 --test fault_clock_jump::...`.
//!
//! Why a pacer on the wall clock fails it: such a pacer computes each event's due time as its
//! start on the wall clock plus the event's offset. After the jump ahead, every remaining due
//! time lies an hour in the past, so the remaining events all go out at once, up to several
//! hundred milliseconds before their offsets: the "none early" check fails. After the jump
//! behind, the remaining events wait an hour: the read timeout fails the test long before.
//! Tried once with `Deadline::poll_until` comparing due instants with the wall clock: the 25
//! events after the jump ahead (at 276 ms) all arrived before the jump behind (at 626 ms), and
//! the test failed. Both jumps are checked to fall between events, since a jump after the
//! stream (a `date -s` process starting slowly in an emulated guest did that) proves nothing.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use llmsim_tests::kernels::{in_kernel_vm, matrix_row, xtask_kernels};
use llmsim_tests::paced_stream::{StreamFetch, write_stream_snapshot};
use llmsim_tests::{ChildGuard, Lines, on_path, privileged, replayd, requires};

/// Events in the recorded stream, and the time between them.
const EVENTS: u32 = 30;
const SPACING_MS: f64 = 50.0;
/// When the clock jumps an hour ahead, and then two hours behind, after the request.
const JUMP_AHEAD_AT: Duration = Duration::from_millis(275);
const JUMP_BEHIND_AT: Duration = Duration::from_millis(625);
/// How late an event may be: replayd's pacing target.
const TOLERANCE_MS: f64 = 2.0;
const HOUR_SECS: i64 = 3600;
const WAIT: Duration = Duration::from_secs(60);

/// The test's own name, as `cargo xtask kernels --test` takes it.
const SELF: &str = "fault_clock_jump::a_wall_clock_jump_mid_stream_moves_no_event";

/// Seconds since the epoch on the wall clock.
fn wall_secs() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the wall clock is after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit in i64")
}

/// Moves `CLOCK_REALTIME` by `secs` with one `clock_settime` call (a `date -s` process would
/// take longer to start in an emulated guest than the whole stream lasts), checks that the wall
/// clock really moved, and returns when the jump took effect.
fn jump_clock(secs: i64) -> Instant {
    let before = wall_secs();
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut now) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    now.tv_sec += secs;
    // SAFETY: `now` is a valid, initialised timespec.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &raw const now) };
    assert_eq!(rc, 0, "clock_settime: {}", std::io::Error::last_os_error());
    let at = Instant::now();
    let moved = wall_secs() - before;
    assert!(
        (moved - secs).abs() <= 5,
        "the wall clock moved {moved} s, not {secs} s"
    );
    at
}

/// How late this machine wakes from a sleep of the event spacing, at worst over a few tries.
fn sleep_overshoot_ms() -> f64 {
    let spacing = Duration::from_secs_f64(SPACING_MS / 1e3);
    (0..10)
        .map(|_| {
            let start = Instant::now();
            std::thread::sleep(spacing);
            start.elapsed().saturating_sub(spacing).as_secs_f64() * 1e3
        })
        .fold(0.0, f64::max)
}

/// How late each event arrived after its recorded offset, in ms.
fn lateness(arrivals: &[Duration], offsets: &[f64]) -> Vec<f64> {
    arrivals
        .iter()
        .zip(offsets)
        .map(|(at, offset)| at.as_secs_f64() * 1e3 - offset)
        .collect()
}

/// A snapshot of one `GET /v1/stream` answered with `EVENTS` events `{"n":i}`, `SPACING_MS`
/// apart.
fn write_snapshot(dir: &std::path::Path) -> Vec<f64> {
    let offsets: Vec<f64> = (1..=EVENTS).map(|i| f64::from(i) * SPACING_MS).collect();
    write_stream_snapshot(dir, &offsets);
    offsets
}

/// Fetches the stream and returns when each event arrived, counted from just before the
/// request was written; with `jumps`, another thread meanwhile jumps the clock, and the
/// instants of the jumps come back too. An event ends
/// with a blank line, and no other part of the answer has one (header lines and chunk framing
/// end in CRLF).
fn fetch(addr: SocketAddr, jumps: bool) -> (Vec<Duration>, Vec<Duration>) {
    let stream = TcpStream::connect(addr).expect("connect to replayd");
    let fetch = StreamFetch::start(stream, addr).expect("send the request");
    let sent = fetch.sent;
    let jumper = jumps.then(|| {
        std::thread::spawn(move || {
            std::thread::sleep(JUMP_AHEAD_AT.saturating_sub(sent.elapsed()));
            let ahead = jump_clock(HOUR_SECS) - sent;
            std::thread::sleep(JUMP_BEHIND_AT.saturating_sub(sent.elapsed()));
            let behind = jump_clock(-2 * HOUR_SECS) - sent;
            vec![ahead, behind]
        })
    });
    let arrivals = fetch.arrivals(EVENTS as usize).unwrap_or_else(|e| {
        panic!("{e} (a pacer on the wall clock waits an hour after the jump behind)")
    });
    let jump_instants =
        jumper.map_or_else(Vec::new, |thread| thread.join().expect("the clock jumps"));
    (arrivals, jump_instants)
}

#[test]
fn a_wall_clock_jump_mid_stream_moves_no_event() {
    if !privileged("clock jump during pacing") {
        return;
    }
    if !in_kernel_vm() {
        // The host's clock stays put: the test runs in a guest of the kernel matrix.
        if !requires(
            on_path("vng") && on_path("qemu-system-x86_64"),
            "clock jump during pacing",
            "needs virtme-ng and QEMU (scripts/setup.sh)",
        ) {
            return;
        }
        let output = xtask_kernels(&["--kernel", "6.12", "--test", SELF]);
        assert!(output.status.success(), "{output}");
        assert_eq!(matrix_row(&output, "6.12"), (1, 0), "{output}");
        return;
    }

    let scratch = tempfile::tempdir().expect("tempdir");
    let snapshot = scratch.path().join("snapshot");
    let offsets = write_snapshot(&snapshot);
    let mut cmd = Command::new(replayd());
    cmd.args(["--listen", "127.0.0.1:0", "--pace", "recorded", "--in"])
        .arg(&snapshot)
        .arg("--ca-dir")
        .arg(scratch.path().join("ca"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut daemon = ChildGuard::spawn(&mut cmd, "replayd --listen");
    let mut err = Lines::new(daemon.child_mut().stderr.take().expect("stderr"), "replayd");
    let line = err.wait_for(
        |l| l.starts_with("replayd: listening on "),
        WAIT,
        String::new,
    );
    let addr: SocketAddr = line
        .trim()
        .trim_start_matches("replayd: listening on ")
        .parse()
        .unwrap_or_else(|e| panic!("replayd's address in `{line}`: {e}"));

    // Two fetches without a jump first: they warm replayd up and measure how late this
    // machine delivers events anyway (an emulated guest, a busy host), which is allowed on
    // top of the tolerance and reported with any failure rather than hidden.
    let control: Vec<f64> = (0..2)
        .flat_map(|_| lateness(&fetch(addr, false).0, &offsets))
        .collect();
    let control_max_ms = control.iter().copied().fold(0.0, f64::max);
    let stall_ms = control_max_ms.max(sleep_overshoot_ms());

    let started_wall = wall_secs();
    let (arrivals, jumped) = fetch(addr, true);
    let moved = wall_secs() - started_wall;
    let late = lateness(&arrivals, &offsets);
    // Put the clock back where it would be.
    jump_clock(HOUR_SECS);
    assert!(
        (moved + HOUR_SECS).abs() <= 5,
        "the wall clock ended {moved} s from where it started, not an hour behind"
    );

    let allowed_ms = TOLERANCE_MS + stall_ms;
    let report = || {
        offsets
            .iter()
            .zip(&late)
            .map(|(offset, late)| format!("{offset} ms: {late:+.3} ms"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (i, (late, offset)) in late.iter().zip(&offsets).enumerate() {
        assert!(
            *late >= 0.0,
            "event {i}, recorded at {offset} ms, arrived {:.3} ms early\n{}",
            -late,
            report()
        );
        assert!(
            *late <= allowed_ms,
            "event {i}, recorded at {offset} ms, arrived {late:.3} ms late: more than {TOLERANCE_MS} ms \
             plus this machine's stall of {stall_ms:.3} ms (the latest event without a jump)\n{}",
            report()
        );
    }
    // And the jumps happened mid-stream, each with events on both sides: otherwise the test
    // could not tell a pacer on the wall clock from one on the monotonic clock.
    let before = |at: Duration| arrivals.iter().filter(|a| **a < at).count();
    let (ahead, behind) = (before(jumped[0]), before(jumped[1]));
    assert!(
        ahead >= 2 && behind - ahead >= 2 && arrivals.len() - behind >= 2,
        "the clock jumped at {:?} and {:?}, with {ahead}, {} and {} events before, between \
         and after: not mid-stream",
        jumped[0],
        jumped[1],
        behind - ahead,
        arrivals.len() - behind
    );
}
