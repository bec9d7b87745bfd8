//! `llmsim-agent`: the command line over the capture library, for
//! `report`, `verify` and `export` the offline tools of `llmsim-inspect`, and for
//! `replay` the driver of `llmsim-drive`.

use std::{
    ffi::OsString, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration,
};

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use llmsim_agent::{
    capture::{Capture, CaptureOptions, Summary, Target, UsageError},
    coverage::{LiveReport, NotDecrypted},
};

/// The allocator for the whole process (see agent/Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Watch running processes and report which of their TLS connections are decrypted, and why not.
    Coverage(CoverageArgs),
    /// Tokens, cost and latency of a snapshot, per provider and model.
    Report(ReportArgs),
    /// Check a snapshot before committing it: parse errors, secrets, incomplete exchanges, duplicates.
    Verify(VerifyArgs),
    /// Write a snapshot in another format (HAR 1.2, for browser devtools; a Locust load test).
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
struct CoverageArgs {
    /// Watch this process and its threads (repeatable).
    #[arg(long = "pid", value_name = "PID", required = true)]
    pids: Vec<u32>,
    /// Stop after this long (`30`, `30s`, `5m`, `500ms`); else when every process has exited, or on Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `N` (seconds), `Nms`, `Ns`, `Nm` or `Nh`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 5m or 500ms"))?;
    let seconds = |factor: u64| Duration::from_secs(number.saturating_mul(factor));
    match unit {
        "" | "s" => Ok(seconds(1)),
        "ms" => Ok(Duration::from_millis(number)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        _ => Err(format!(
            "`{text}` is not a duration such as 30s, 5m or 500ms"
        )),
    }
}

#[derive(Args)]
struct VerifyArgs {
    /// Snapshot directory.
    #[arg(default_value = "llmsim")]
    dir: PathBuf,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("format").required(true).args(["har", "locust"])))]
struct ExportArgs {
    /// Write a HAR 1.2 file here.
    #[arg(long, value_name = "FILE")]
    har: Option<PathBuf>,
    /// Write a locustfile here that sends the inbound requests again (one Locust task each).
    #[arg(long, value_name = "FILE")]
    locust: Option<PathBuf>,
    /// The app's base URL (http://HOST:PORT), the locustfile's default for Locust's --host.
    #[arg(long, value_name = "URL", requires = "locust")]
    host: Option<String>,
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
    /// Also record the requests the target serves on this port (repeatable), over plain
    /// HTTP or TLS, as inbound exchanges linked to the calls made while serving them.
    #[arg(long = "app-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    app_ports: Vec<u16>,
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
        Command::Coverage(args) => coverage(&args),
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
    if let Some(har) = &args.har {
        match llmsim_inspect::har::export(&args.dir, har) {
            Ok(n) => eprintln!("llmsim-agent: wrote {n} entries to {}", har.display()),
            Err(e) => return fail(&e),
        }
    }
    if let Some(locust) = &args.locust {
        match llmsim_agent::export::locust::export(&args.dir, locust, args.host.as_deref()) {
            Ok(written) => eprintln!(
                "llmsim-agent: wrote {} requests to {} ({} incomplete left out)",
                written.requests,
                locust.display(),
                written.incomplete
            ),
            Err(e) => return fail(&e),
        }
    }
    ExitCode::SUCCESS
}

fn replay(args: ReplayArgs) -> ExitCode {
    let bad_input = |e: &dyn std::error::Error| {
        eprintln!("llmsim-agent: {}", llmsim_snapshot::error_chain(e));
        ExitCode::from(llmsim_drive::EXIT_BAD_INPUT)
    };
    let driver = match llmsim_drive::Driver::new(&args.dir, &args.target, args.drive) {
        Ok(driver) if args.metrics.is_some() => driver.with_metrics(),
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
        let metrics = match args.metrics.zip(driver.metrics()) {
            Some((addr, kept)) => {
                let sources: Vec<Arc<dyn llmsim_drive::exposition::Exposed>> = vec![kept.clone()];
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
        let summary = match driver.run().await {
            Ok(summary) => summary,
            Err(e) => {
                eprintln!("llmsim-agent: starting the driver's threads: {e}");
                return ExitCode::FAILURE;
            }
        };
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
        app_ports: args.app_ports.clone(),
        quiet: false,
        sizes: llmsim_kernel::object::MapSizes {
            ring_bytes: args.ring_size,
            call_table: args.call_table_size,
        },
        duration: None,
    };
    match run_capture(&options, || {}) {
        Ok(summary) => {
            print_summary(&summary, args.json);
            match summary.exit_code {
                Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                None => ExitCode::SUCCESS,
            }
        }
        Err(code) => code,
    }
}

/// Prepares and runs a capture, calling `started` once its probes are attached;
/// an error is printed, and is the exit code.
fn run_capture(options: &CaptureOptions, started: impl FnOnce()) -> Result<Summary, ExitCode> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("llmsim-agent: starting the runtime: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let capture = Capture::prepare(options)?;
        started();
        capture.run().await
    });
    result.map_err(|e| {
        eprintln!("llmsim-agent: {e:#}");
        if e.downcast_ref::<UsageError>().is_some() {
            ExitCode::from(2)
        } else {
            ExitCode::FAILURE
        }
    })
}

/// A capture of the processes into a temporary snapshot, every host recorded, that
/// prints only its coverage: the probes placed, the exchanges read, the connections not
/// decrypted.
fn coverage(args: &CoverageArgs) -> ExitCode {
    let scratch = match tempfile::Builder::new()
        .prefix("llmsim-coverage-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("llmsim-agent: creating a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = CaptureOptions {
        out: scratch.path().to_path_buf(),
        target: Target::Pids(args.pids.clone()),
        hosts: Vec::new(),
        any_host: true,
        app_ports: Vec::new(),
        quiet: true,
        sizes: llmsim_kernel::object::MapSizes::default(),
        duration: args.duration,
    };
    let pids: Vec<String> = args.pids.iter().map(u32::to_string).collect();
    let summary = match run_capture(&options, || {
        eprintln!(
            "llmsim-agent: watching pid {}; stops when they exit{} or on Ctrl-C",
            pids.join(", "),
            args.duration
                .map(|d| format!(", after {d:?},"))
                .unwrap_or_default()
        );
    }) {
        Ok(summary) => summary,
        Err(code) => return code,
    };
    let report = LiveReport {
        pids: &args.pids,
        exchanges_decrypted: summary.recorded.exchanges_written,
        probes: &summary.probes,
        not_decrypted: &summary.not_decrypted,
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("llmsim-agent: the report as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("decrypted: {} HTTP exchanges", report.exchanges_decrypted);
        for placed in report.probes {
            println!("probes: {}: {}", placed.object, placed.description);
        }
        for line in not_decrypted_lines(report.not_decrypted) {
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}

/// The coverage report's lines on connections not decrypted: a count, then each
/// connection and its hint; none when every connection was decrypted.
fn not_decrypted_lines(not_decrypted: &[NotDecrypted]) -> Vec<String> {
    if not_decrypted.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!(
        "TLS connections not decrypted: {}",
        not_decrypted.len()
    )];
    for connection in not_decrypted {
        lines.push(format!("  {connection}"));
        lines.push(format!("    hint: {}", connection.hint));
    }
    lines
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
    if recorded.inbound_exchanges_written > 0 {
        eprintln!(
            "llmsim-agent: of those, {} inbound (served on --app-port)",
            recorded.inbound_exchanges_written
        );
    }
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
    for line in not_decrypted_lines(&summary.not_decrypted) {
        eprintln!("llmsim-agent: {line}");
    }
    if json {
        match serde_json::to_string_pretty(summary) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("llmsim-agent: summary as JSON: {e}"),
        }
    }
}
