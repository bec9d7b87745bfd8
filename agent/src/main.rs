//! `llmsim-agent`: the command line over the capture library, for
//! `report`, `verify` and `export` the offline tools of `llmsim-inspect`, and for
//! `replay` the driver of `llmsim-drive`.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use llmsim_agent::capture::{Capture, CaptureOptions, Summary, Target, UsageError};

#[derive(Parser)]
#[command(
    name = "llmsim-agent",
    version,
    long_version = llmsim_kernel::build_info::AGENT_LONG_VERSION,
    about = "Record LLM API traffic of unmodified programs with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record the HTTPS exchanges of processes into a snapshot directory.
    Capture(CaptureArgs),
    /// Tokens, cost and latency of a snapshot, per provider and model.
    Report(ReportArgs),
    /// Check a snapshot before committing it: parse errors, secrets, incomplete exchanges, duplicates.
    Verify(VerifyArgs),
    /// Write a snapshot in another format (HAR 1.2, for browser devtools).
    Export(ExportArgs),
    /// Send the recorded inbound requests to the running app again and compare its answers
    /// with the recorded ones (exit 1 on any difference); or load-test it.
    Replay(ReplayArgs),
    /// Write the manual pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateManual { dir: PathBuf },
}

#[derive(Args)]
struct ReportArgs {
    /// Snapshot directory.
    #[arg(default_value = "llmsim")]
    dir: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML page with charts to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Prices overriding the built-in table (same TOML format as snapshot/data/prices.toml).
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
}

#[derive(Args)]
struct VerifyArgs {
    /// Snapshot directory.
    #[arg(default_value = "llmsim")]
    dir: PathBuf,
}

#[derive(Args)]
struct ExportArgs {
    /// Write a HAR 1.2 file here.
    #[arg(long, value_name = "FILE")]
    har: PathBuf,
    /// Snapshot directory.
    #[arg(default_value = "llmsim")]
    dir: PathBuf,
}

#[derive(Args)]
struct ReplayArgs {
    /// The running app's base URL: http://HOST:PORT or https://HOST:PORT.
    #[arg(long, value_name = "URL")]
    target: String,
    /// Serve the driver's Prometheus metrics on ADDR at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    drive: llmsim_drive::DriveOptions,
    /// Snapshot directory.
    #[arg(default_value = "llmsim")]
    dir: PathBuf,
}

#[derive(Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line flags"
)]
struct CaptureArgs {
    /// Snapshot directory (created, or appended to).
    #[arg(long, default_value = "llmsim")]
    out: PathBuf,
    /// Capture this process and its threads (repeatable).
    #[arg(long = "pid", value_name = "PID", conflicts_with_all = ["cgroup", "all", "argv"])]
    pids: Vec<u32>,
    /// Capture every process in this cgroup v2 (path under the cgroup2 mount, or absolute).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["all", "argv"])]
    cgroup: Option<PathBuf>,
    /// Capture every process on the host.
    #[arg(long, conflicts_with = "argv")]
    all: bool,
    /// Also record hosts matching this glob (repeatable), besides the known providers;
    /// HOST:PORT also records that destination's plain-HTTP connections.
    #[arg(long = "host", value_name = "PATTERN")]
    hosts: Vec<String>,
    /// Record every HTTP exchange, whatever the host, plain-HTTP connections included.
    #[arg(long)]
    any_host: bool,
    /// Under sudo, run CMD as root instead of as the invoking user.
    #[arg(long)]
    as_root: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Testing only: bytes of the kernel's ring buffer (a power of two).
    #[arg(long, value_name = "BYTES", hide = true)]
    ring_size: Option<u32>,
    /// Testing only: entries of the kernel's table of TLS calls in progress.
    #[arg(long, value_name = "N", hide = true)]
    call_table_size: Option<u32>,
    /// Run this command in a fresh cgroup and capture its whole process tree.
    #[arg(last = true, value_name = "CMD")]
    argv: Vec<OsString>,
}

impl CaptureArgs {
    fn target(&self) -> Option<Target> {
        if !self.pids.is_empty() {
            Some(Target::Pids(self.pids.clone()))
        } else if let Some(cgroup) = &self.cgroup {
            Some(Target::Cgroup(cgroup.clone()))
        } else if self.all {
            Some(Target::All)
        } else if !self.argv.is_empty() {
            Some(Target::Command {
                argv: self.argv.clone(),
                as_root: self.as_root,
            })
        } else {
            None
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LLMSIM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Capture(args) => capture(&args),
        Command::Report(args) => report(&args),
        Command::Verify(args) => verify(&args),
        Command::Export(args) => export(&args),
        Command::Replay(args) => replay(args),
        Command::GenerateManual { dir } => match llmsim_kernel::manual::write(Cli::command(), &dir)
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

fn report(args: &ReportArgs) -> ExitCode {
    let ledger = match llmsim_inspect::report::load_ledger(&args.dir, args.prices.as_deref()) {
        Ok(ledger) => ledger,
        Err(e) => return fail(&e),
    };
    if args.json {
        match llmsim_inspect::report::to_json(&ledger) {
            Ok(text) => print!("{text}"),
            Err(e) => return fail(&e),
        }
    } else {
        print!("{}", llmsim_inspect::report::table::render(&ledger));
    }
    if let Some(path) = &args.html {
        let title = args.dir.display().to_string();
        if let Err(e) = llmsim_inspect::report::write_html(&ledger, &title, path) {
            return fail(&e);
        }
        eprintln!("llmsim-agent: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

fn verify(args: &VerifyArgs) -> ExitCode {
    match llmsim_inspect::verify::verify(&args.dir) {
        Ok(found) => {
            for problem in &found.problems {
                println!("{problem}");
            }
            println!("{}", found.summary());
            if found.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("llmsim-agent: {}", llmsim_snapshot::error_chain(&e));
            ExitCode::from(2)
        }
    }
}

fn export(args: &ExportArgs) -> ExitCode {
    match llmsim_inspect::har::export(&args.dir, &args.har) {
        Ok(n) => {
            eprintln!("llmsim-agent: wrote {n} entries to {}", args.har.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn replay(args: ReplayArgs) -> ExitCode {
    let bad_input = |e: &dyn std::error::Error| {
        eprintln!("llmsim-agent: {}", llmsim_snapshot::error_chain(e));
        ExitCode::from(llmsim_drive::EXIT_BAD_INPUT)
    };
    let driver = match llmsim_drive::Driver::new(&args.dir, &args.target, args.drive) {
        Ok(driver) => driver,
        Err(e) => return bad_input(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("llmsim-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let metrics = match args.metrics {
            Some(addr) => {
                let sources: Vec<Arc<dyn llmsim_drive::exposition::Exposed>> =
                    vec![driver.metrics().clone()];
                match llmsim_drive::exposition::start(addr, sources) {
                    Ok(bound) => {
                        eprintln!("llmsim-agent: metrics on http://{bound}/metrics");
                        true
                    }
                    Err(e) => return bad_input(&e),
                }
            }
            None => false,
        };
        let summary = driver.run().await;
        summary.print(driver.options().json);
        if metrics && let Some(linger) = driver.options().metrics_linger {
            tokio::time::sleep(linger).await;
        }
        ExitCode::from(summary.exit_code())
    })
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("llmsim-agent: {}", llmsim_snapshot::error_chain(e));
    ExitCode::FAILURE
}

fn capture(args: &CaptureArgs) -> ExitCode {
    let Some(target) = args.target() else {
        eprintln!("llmsim-agent: say what to capture: --pid PID, --cgroup PATH, --all or -- CMD");
        return ExitCode::from(2);
    };
    let options = CaptureOptions {
        out: args.out.clone(),
        target,
        hosts: args.hosts.clone(),
        any_host: args.any_host,
        quiet: false,
        sizes: llmsim_kernel::object::MapSizes {
            ring_bytes: args.ring_size,
            call_table: args.call_table_size,
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("llmsim-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async { Capture::prepare(&options)?.run().await });
    match result {
        Ok(summary) => {
            print_summary(&summary, args.json);
            match summary.exit_code {
                Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("llmsim-agent: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn print_summary(summary: &Summary, json: bool) {
    let recorded = &summary.recorded;
    eprintln!(
        "llmsim-agent: {} exchanges written ({} bytes), {} incomplete, {} events dropped{}",
        recorded.exchanges_written,
        recorded.bytes_written,
        recorded.exchanges_incomplete,
        summary.dropped(),
        if summary.connections.non_http_connections > 0 {
            format!(
                ", {} non-HTTP connections skipped",
                summary.connections.non_http_connections
            )
        } else {
            String::new()
        },
    );
    for line in summary.loss_lines() {
        eprintln!("llmsim-agent: {line}");
    }
    let connections = &summary.connections;
    if connections.http2_connections > 0 {
        eprintln!(
            "llmsim-agent: HTTP/2: {} connections, {} exchanges written, {} with header fields left out (capture joined mid-connection), {} connections skipped as malformed, {} streams passed over (begun before the capture joined)",
            connections.http2_connections,
            recorded.http2_exchanges_written,
            connections.http2_withheld_exchanges,
            connections.http2_malformed_connections,
            connections.http2_streams_before_join,
        );
    }
    if recorded.exchanges_written > 0 {
        eprintln!("llmsim-agent: recorded {}", recorded.usage);
    }
    for placed in &summary.probes {
        eprintln!("llmsim-agent: {}: {}", placed.object, placed.description);
    }
    if !summary.not_decrypted.is_empty() {
        eprintln!(
            "llmsim-agent: TLS connections not decrypted: {}",
            summary.not_decrypted.len()
        );
        for connection in &summary.not_decrypted {
            eprintln!("llmsim-agent:   {connection}");
            eprintln!("llmsim-agent:     hint: {}", connection.hint);
        }
    }
    if json {
        match serde_json::to_string_pretty(summary) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("llmsim-agent: summary as JSON: {e}"),
        }
    }
}
