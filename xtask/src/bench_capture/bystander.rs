//! `cargo xtask bench capture --only bystander`: what a process outside the
//! target pays per syscall while the agent runs. The agent's syscall programs
//! sit on the `sys_enter`/`sys_exit` raw tracepoints, which every syscall of
//! every process on the machine goes through once either is attached, so this
//! process (never a target) times two calls on itself: `getppid`, which no
//! program follows, and a write and read of 16 bytes on a Unix socket pair,
//! which the socket I/O paths look at. Without the agent, with it attached to
//! a `sleep` by `--pid`, and running a shell that waits for a line as `-- CMD`
//! (which holds new processes, so its `sys_exit` program is attached too); each round runs the
//! three in a fresh random order, and a run's figure is the best of
//! [`REPEATS`] timings of [`CALLS`] calls, the least disturbed by the machine.

use std::{
    ffi::OsString,
    fmt::Write as _,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context as _;

use super::{Mode, RunningAgent, Shuffle, range, write_go};
use crate::bench_support::median;

/// The modes measured, the baseline first.
const MODES: [Mode; 3] = [Mode::Baseline, Mode::Pid, Mode::Command];
/// Calls per timing, and timings per run.
const CALLS: u32 = 200_000;
const REPEATS: u32 = 5;

/// Nanoseconds per `getppid` and per write+read pair in one run.
struct Costs {
    getppid: f64,
    socket_pair: f64,
}

pub fn run(agent: &Path, rounds: u32, order: &mut Shuffle) -> anyhow::Result<()> {
    println!(
        "\nper syscall, in a process outside the target: best of {REPEATS} x {CALLS} calls, \
         {rounds} rounds of {} runs in random order",
        MODES.len()
    );
    let mut costs: Vec<Vec<Costs>> = MODES.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for i in order.permutation(MODES.len()) {
            costs[i].push(measure_in(agent, MODES[i])?);
        }
    }
    let figures = |pick: fn(&Costs) -> f64| -> Vec<Vec<f64>> {
        costs
            .iter()
            .map(|runs| runs.iter().map(pick).collect())
            .collect()
    };
    for (what, figures) in [
        ("getppid (not followed)", figures(|c| c.getppid)),
        ("write+read, Unix socket", figures(|c| c.socket_pair)),
    ] {
        println!("  {what}");
        for (mode, runs) in MODES.iter().zip(&figures) {
            let (low, high) = range(runs);
            let mut line = format!(
                "    {:<34} {:>8.1} ns (runs {low:.1}-{high:.1})",
                mode.label(),
                median(runs.clone())
            );
            if *mode != Mode::Baseline {
                let added: Vec<f64> = runs.iter().zip(&figures[0]).map(|(m, b)| m - b).collect();
                let (added_low, added_high) = range(&added);
                let _ = write!(
                    line,
                    "  {:+.1} ns (per round {added_low:+.1} to {added_high:+.1})",
                    median(added)
                );
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// One run in `mode`: the agent started (and attached to a `sleep` of its own for
/// `--pid`), the calls timed, the agent stopped (a command ends when it reads the
/// line the agent's stdin passes on).
fn measure_in(agent: &Path, mode: Mode) -> anyhow::Result<Costs> {
    let out = std::env::temp_dir().join(format!("llmsim-bench-bystander-{}", std::process::id()));
    let mut sleeper = None;
    let target: Vec<OsString> = match mode {
        Mode::Baseline => Vec::new(),
        Mode::Command => ["--", "sh", "-c", "read line"].map(OsString::from).to_vec(),
        _ => {
            let child = Command::new("sleep")
                .arg("600")
                .spawn()
                .context("starting sleep")?;
            let pid = child.id().to_string();
            sleeper = Some(child);
            vec!["--pid".into(), pid.into()]
        }
    };
    let running = (mode != Mode::Baseline)
        .then(|| {
            let mut args: Vec<OsString> = vec![
                "capture".into(),
                "--json".into(),
                "--out".into(),
                out.clone().into_os_string(),
            ];
            args.extend(target);
            RunningAgent::start(agent, &args, None, Stdio::piped())
        })
        .transpose()?;
    let costs = measure();
    if let Some(mut running) = running {
        if mode == Mode::Command {
            write_go(running.child.stdin.take())?;
        }
        running.finish(mode != Mode::Command)?;
    }
    if let Some(mut child) = sleeper {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&out);
    costs
}

fn measure() -> anyhow::Result<Costs> {
    let (mut a, mut b) = UnixStream::pair().context("a Unix socket pair")?;
    let mut buf = [0u8; 16];
    let best = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..REPEATS {
            let start = Instant::now();
            for _ in 0..CALLS {
                f()?;
            }
            best = best.min(start.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS));
        }
        Ok(best)
    };
    let getppid = best(&mut || {
        std::hint::black_box(std::os::unix::process::parent_id());
        Ok(())
    })?;
    let socket_pair = best(&mut || {
        a.write_all(&[0; 16]).context("writing")?;
        b.read_exact(&mut buf).context("reading")?;
        Ok(())
    })?;
    Ok(Costs {
        getppid,
        socket_pair,
    })
}
