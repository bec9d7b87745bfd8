//! Developer tasks cargo cannot express alone: the full check run that CI uses
//! (formatting, lints, unit and privileged tests) and the demo. Toolchain
//! set-up lives in scripts/setup.sh because it must run before any Rust can be
//! built.

mod bench_capture;
mod bench_pacing;
mod bench_replay;
mod bench_support;
mod demo;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

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
        /// `pacing`: how closely `--pace recorded` keeps a recorded stream's
        /// event offsets.
        /// `capture`: an HTTPS request loop with and without the agent.
        name: String,
        /// Arguments for the benchmark (`index`: the number of exchanges;
        /// `replay`: --duration, --rounds, --connections, --threads, --rate,
        /// --no-build; `pacing`: --events, --spacing-ms, --rounds, --no-build;
        /// `capture`: requests per run and rounds).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test => test(),
        Task::Bench { name, args } => bench(&name, &args),
        Task::Demo { html } => cargo(&["build", "--bins"]).and_then(|()| demo::run(&html)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
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
        other => bail!("unknown benchmark `{other}` (known: index, replay, pacing, capture)"),
    }
}

/// Runs `cargo test`, passing its output through, and closes with one line
/// totalling every test binary's `test result:` line.
fn cargo_test(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut totals = Totals::default();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!(
        "{} passed, {} failed, {} ignored",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Sums of the `test result: ok. 3 passed; 0 failed; 1 ignored; ...` lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_add_up_test_result_lines() {
        let mut totals = Totals::default();
        totals.add("test result: ok. 46 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.53s");
        totals
            .add("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        totals.add("test foo ... ok");
        assert_eq!((totals.passed, totals.failed, totals.ignored), (49, 1, 2));
    }
}
