//! Developer tasks cargo cannot express alone: the full check run that CI uses
//! (formatting, lints, unit and privileged tests), the kernel matrix, the demo,
//! benchmarks, the generated price table, the fuzz targets' runs and the release
//! artifacts. Toolchain
//! set-up lives in scripts/setup.sh because it must run before any Rust can be
//! built.

mod bench_capture;
mod bench_drive;
mod bench_pacing;
mod bench_replay;
mod bench_support;
mod demo;
mod dist;
mod fuzz;
mod kernels;
mod prices;
mod totals;

use std::{
    io::{self, BufRead as _, BufReader, IsTerminal as _, Read, Write},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    sync::{Mutex, PoisonError},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use totals::Totals;

#[derive(Parser)]
#[command(about = "llmsim developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Formatting, clippy with -D warnings, and the whole test suite. Run as
    /// root to include the privileged eBPF tests; with CI=true they may not skip.
    Test,
    /// Benchmarks, reported as ratios measured side by side in one run.
    Bench {
        /// `index`: replay start-up (load, sign, index) and lookups on a large
        /// snapshot. `replay`: replayd against nginx, plain and TLS, at saturation
        /// (wrk) and at a fixed rate (oha).
        /// `pacing`: how closely `--pace recorded` keeps recorded event offsets
        /// with 2,000 concurrent streams.
        /// `capture`: an HTTPS request loop with and without the agent.
        /// `drive`: the load driver against oha, both saturating nginx.
        name: String,
        /// Arguments for the benchmark (`index`: the number of exchanges;
        /// `replay`: --duration, --rounds, --connections, --threads, --rate,
        /// --no-build; `pacing`: --events, --spacing-ms, --streams, --rounds, --no-build;
        /// `capture`: requests per run and rounds; `drive`: --duration, --rounds,
        /// --connections, --no-build).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The README's main job: the triage demo app replayed offline from its
    /// bundled recording, then its HTML report. Needs root.
    Demo {
        /// Where the HTML report goes.
        #[arg(long, default_value = "target/demo/report.html")]
        html: PathBuf,
    },
    /// Release artifacts for x86-64 Linux: static (musl) `llmsim-agent` and
    /// `replayd` in a versioned tarball with its SHA-256 checksum file, and a
    /// Debian package with the manual pages and shell completions.
    Dist {
        /// Where the artifacts go.
        #[arg(long, value_name = "DIR", default_value = "target/dist")]
        out: PathBuf,
    },
    /// The privileged core of the suite (capture of openai-python and node, offline
    /// replay, the redirect kill test) on Debian's kernels under QEMU (virtme-ng) and on
    /// the host's, as a table. Needs root.
    Kernels(kernels::Args),
    /// Builds the libFuzzer targets under fuzz/ (cargo-fuzz, the eBPF nightly), seeds
    /// them from the recorded traffic in the repository and runs each for a while, then
    /// prints per target: executions, exec/s, coverage (`cov`, `ft`), corpus size and
    /// crashes. Fails on a crash, naming the saved input.
    Fuzz {
        /// Seconds each target runs; 0 runs each target's corpus once, with no new inputs.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        time: u64,
        /// Only this target (`cargo fuzz list` names them).
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// Only write the seed corpora into fuzz/corpus/.
        #[arg(long)]
        seed: bool,
    },
    /// Writes snapshot/data/prices.toml from the model price file of the
    /// installed `litellm` Python package (the release pinned in xtask/src/prices.rs).
    Prices {
        /// The price file (`litellm/model_prices_and_context_window_backup.json`)
        /// in an installed or unpacked `litellm` package, instead of the one python3 finds.
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test => test(),
        Task::Bench { name, args } => bench(&name, &args),
        Task::Demo { html } => cargo(&["build", "--bins"]).and_then(|()| demo::run(&html)),
        Task::Kernels(args) => kernels::run(&args),
        Task::Fuzz { time, target, seed } => fuzz::run(
            &llmsim_tests::repo_root(),
            &fuzz::Options {
                time,
                target,
                seed_only: seed,
            },
        ),
        Task::Prices { from } => prices::run(from.as_deref()),
        Task::Dist { out } => dist::run(&llmsim_tests::repo_root(), &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command running the cargo that built xtask, without the variables cargo
/// sets for the package it runs (`CARGO_PKG_*`, `CARGO_MANIFEST_*`, ...): build
/// scripts such as ring's rerun when those change, so passing on xtask's own
/// would rebuild them and everything above them whenever a build alternates
/// between `cargo xtask` and plain `cargo`.
fn cargo_command() -> Command {
    without_package_env(Command::new(env!("CARGO")))
}

/// `command` without the variables cargo sets for the package it runs (see
/// [`cargo_command`]).
fn without_package_env(mut command: Command) -> Command {
    const PER_PACKAGE: [&str; 7] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        if PER_PACKAGE
            .iter()
            .any(|prefix| name.to_string_lossy().starts_with(prefix))
        {
            command.env_remove(name);
        }
    }
    command
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = cargo_command()
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;

    // The end-to-end tests drive the binaries, which `cargo test` does not
    // build for another package's tests.
    cargo(&["build", "--bins"])?;
    cargo_test(&["test", "--workspace", "--no-fail-fast"])
}

fn bench(name: &str, args: &[String]) -> anyhow::Result<()> {
    match name {
        "index" => {
            let mut cargo_args = vec!["bench", "-p", "llmsim-replayd", "--bench", "index", "--"];
            cargo_args.extend(args.iter().map(String::as_str));
            cargo(&cargo_args)
        }
        "replay" => bench_replay::run(args),
        "pacing" => bench_pacing::run(args),
        "capture" => bench_capture::run(args),
        "drive" => bench_drive::run(args),
        other => {
            bail!("unknown benchmark `{other}` (known: index, replay, pacing, capture, drive)")
        }
    }
}

/// Runs `cargo test`, passing its output through, and closes with one line
/// totalling every test binary's `test result:` line and every skipped test
/// ([`Totals`]).
fn cargo_test(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut command = cargo_command();
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Cargo colours its stderr only on a terminal; here that stderr reaches
    // the terminal through a pipe.
    if std::env::var_os("CARGO_TERM_COLOR").is_none() && io::stderr().is_terminal() {
        command.env("CARGO_TERM_COLOR", "always");
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let stderr = child.stderr.take().context("cargo test stderr")?;
    let totals = Mutex::new(Totals::default());
    std::thread::scope(|scope| {
        let stderr = scope.spawn(|| relay(stderr, io::stderr(), &totals));
        let stdout = relay(stdout, io::stdout(), &totals);
        let stderr = stderr
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        stdout.context("passing cargo test's stdout through")?;
        stderr.context("passing cargo test's stderr through")
    })?;
    let status = child.wait().context("waiting for cargo test")?;
    let totals = totals.into_inner().unwrap_or_else(PoisonError::into_inner);
    println!("{totals}");
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Copies `from` to `to` line by line, as bytes, counting each line in `totals`.
fn relay(from: impl Read, mut to: impl Write, totals: &Mutex<Totals>) -> io::Result<()> {
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        if from.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        to.write_all(&line)?;
        to.flush()?;
        totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&String::from_utf8_lossy(&line));
    }
}
