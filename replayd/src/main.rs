//! `replayd`: the replay daemon's command line. It parses the arguments, sets up logging
//! to stderr, and hands each mode to the library's `run` module: `--listen ADDR` serves the
//! snapshot on a plain loopback listener; `-- CMD`, `--cgroup PATH` and `--all` add the
//! kernel redirect; `trust` manages the CA in the system store; `explain`
//! tells what replay would do with one request. `--on-miss passthrough|record` forward
//! misses to the real API (`--budget` caps the live spend). `--drive URL -- CMD` also
//! sends the snapshot's inbound requests to the app CMD serves at URL and compares its
//! answers (the driver of `llmsim-drive`, with its load options). Start-up errors print one
//! line and exit 2; a run with misses (or recordings that could not be sent, or a client
//! that rejected the replay CA) exits 1, and so does a drive with a difference or an error.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{ArgGroup, Args, CommandFactory as _, Parser, Subcommand};
use llmsim_drive::exposition::Exposed;
use llmsim_drive::{DriveOptions, Driver};
use llmsim_kernel::redirect::RedirectSettings;
use llmsim_replayd::engine::Engine;
use llmsim_replayd::explain::{RequestFile, explain};
use llmsim_replayd::metrics::Metrics;
use llmsim_replayd::options::{LoadOptions, OnMiss, Pace, ReplayOptions};
use llmsim_replayd::rate_limit::RateLimit;
use llmsim_replayd::redirect::{self, KernelRedirect, RedirectTarget};
use llmsim_replayd::run::{self, ListenAddr, Server};
use llmsim_replayd::upstream::UpstreamSettings;
use llmsim_replayd::{ca, dns, report::Report};
use llmsim_snapshot::config::FaultRule;
use llmsim_snapshot::signature::Repeat;

/// The allocator for the whole process (see replayd/Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code of a run that had misses.
const EXIT_MISSES: u8 = 1;
/// Exit code of a start-up error.
const EXIT_STARTUP: u8 = 2;
/// Exit code when SIGINT/SIGTERM ended a `-- CMD` run before the command.
const EXIT_INTERRUPTED: u8 = 130;

/// Answers unmodified apps' LLM API calls from a recorded snapshot.
#[derive(Debug, Parser)]
#[command(
    name = "replayd",
    version,
    long_version = llmsim_kernel::build_info::REPLAYD_LONG_VERSION,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// The serving modes and their options.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["listen", "cgroup", "all", "cmd"])))]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line flags"
)]
struct ServeArgs {
    /// The snapshot directory.
    #[arg(long = "in", value_name = "DIR", default_value = "llmsim")]
    dir: PathBuf,
    /// Serve on this address with no kernel hooks; the host comes from the Host header.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Pacing of streamed answers: recorded, model (time to first token and tokens per
    /// second drawn from the recording's own distributions), instant or xN (x2 is twice
    /// as fast).
    #[arg(
        long,
        visible_alias = "latency",
        value_name = "PACE",
        default_value = "recorded"
    )]
    pace: Pace,
    #[arg(
        long,
        value_name = "RULE",
        help = "Inject a fault, as a [[faults.rules]] entry of llmsim.toml written \
                key=value,...: kind=429|500|502|503|529|reset|stall|cut|stream-error|\
                slow-first-token, rate=R or every=N, and optionally provider=, endpoint=, \
                model=, after_events=, delay_ms="
    )]
    fault: Vec<FaultRule>,
    /// Seed for fault injection and --pace model (default: [faults] seed, else 0).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Simulate a provider's rate limit: PROVIDER=RPM[/TPM] (requests and tokens per
    /// minute) or PROVIDER=recorded (the recording's x-ratelimit-* headers).
    #[arg(long, value_name = "LIMIT")]
    rate_limit: Vec<RateLimit>,
    /// Serve Prometheus metrics on ADDR at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// What a request gets once its recordings are used up: last, cycle or fail.
    #[arg(long, value_name = "POLICY", default_value = "last")]
    repeat: Repeat,
    /// What a request with no recording gets: fail (an error naming the closest
    /// recording), passthrough (forward to the real host) or record (forward and append the
    /// exchange to the snapshot).
    #[arg(long = "on-miss", value_name = "POLICY", default_value = "fail")]
    on_miss: OnMiss,
    /// With passthrough or record: stop forwarding once the live spend would exceed USD.
    #[arg(long, value_name = "USD")]
    budget: Option<f64>,
    /// A price file overriding the built-in prices, for --budget and the report.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// Where the replay CA lives (default: the user's data directory).
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// Answer NXDOMAIN for names that were not recorded instead of forwarding them.
    #[arg(long)]
    no_network: bool,
    /// Redirect every non-loopback destination, not only the recorded hosts.
    #[arg(long)]
    all_hosts: bool,
    /// Serve the processes of this existing cgroup (v2) until SIGINT/SIGTERM.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Redirect the whole host (explicit opt-in).
    #[arg(long)]
    all: bool,
    /// Under sudo, run CMD as root instead of as the invoking user.
    #[arg(long)]
    as_root: bool,
    /// With -- CMD: once URL's port accepts connections, send the snapshot's inbound
    /// requests to the app at URL and compare its answers with the recorded ones; the
    /// exit status is the drive's.
    #[arg(long, value_name = "URL", requires = "cmd")]
    drive: Option<String>,
    /// With --drive: how long the app may take to accept connections.
    #[arg(long, value_name = "D", default_value = "30s", value_parser = humantime_duration)]
    drive_wait: Duration,
    #[command(flatten)]
    drive_options: DriveOptions,
    /// The command to run under replay.
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<OsString>,
}

fn humantime_duration(value: &str) -> Result<Duration, String> {
    value
        .parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install or remove the replay CA in the system trust store, for the daemon modes.
    Trust {
        #[command(subcommand)]
        action: TrustAction,
        /// Where the replay CA lives (default: the user's data directory).
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
    },
    /// Show which recording a request would get, or the nearest one and how it differs.
    Explain {
        /// `[DIR] REQUEST.json`: the snapshot directory (default ./llmsim) and a file
        /// `{"method", "host", "path", "headers", "body"}`.
        #[arg(num_args = 1..=2, required = true, value_name = "[DIR] REQUEST.json")]
        paths: Vec<PathBuf>,
    },
    /// Write the manual pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateManual { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
enum TrustAction {
    /// Add the CA to the system store (creating the CA on first use).
    Install,
    /// Remove it again.
    Uninstall,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("replayd: {e:#}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REPLAYD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Trust { action, ca_dir }) => trust(&action, ca_dir),
        Some(Command::Explain { paths }) => explain_request(&paths),
        Some(Command::GenerateManual { dir }) => {
            llmsim_kernel::manual::write(Cli::command(), &dir)?;
            Ok(ExitCode::SUCCESS)
        }
        None => serve(&cli.serve),
    }
}

fn serve(args: &ServeArgs) -> Result<ExitCode> {
    // Each connection takes a file.
    if let Err(e) = llmsim_kernel::sys::raise_open_file_limit() {
        tracing::warn!("cannot raise the limit on open files: {e}");
    }
    if args.drive.is_none() && args.drive_options != DriveOptions::default() {
        bail!(
            "--multiply, --rate, --concurrency, --duration, --unique, --timeout, --json and --metrics-linger need --drive URL"
        );
    }
    let Some(addr) = args.listen else {
        return redirect(args);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Through a base URL the Host header is the listener's own address: match any host.
    let engine = Arc::new(load_engine(args, true)?);
    for line in engine_summary(&engine) {
        eprintln!("replayd: {line}");
    }
    runtime.block_on(listen(engine, addr, args))
}

/// The replay options from the command line; `any_host` for `--listen` only, since the
/// redirect modes see the real host names.
fn replay_options(args: &ServeArgs, any_host: bool) -> ReplayOptions {
    ReplayOptions {
        pace: args.pace,
        repeat: args.repeat,
        on_miss: args.on_miss,
        any_host,
        max_request_body: ReplayOptions::DEFAULT_MAX_REQUEST_BODY,
    }
}

/// The engine for a serving mode, forwarding misses as `--on-miss` says.
fn load_engine(args: &ServeArgs, any_host: bool) -> Result<Engine> {
    if args.on_miss == OnMiss::Fail && (args.budget.is_some() || args.prices.is_some()) {
        bail!("--budget and --prices need --on-miss passthrough or record");
    }
    let settings = UpstreamSettings {
        on_miss: args.on_miss,
        budget_usd: args.budget,
        prices: args.prices.clone(),
        ..UpstreamSettings::default()
    };
    let engine = run::load_engine_with(&args.dir, replay_options(args, any_host), settings)?
        .with_load(LoadOptions {
            faults: args.fault.clone(),
            seed: args.seed,
            rate_limits: args.rate_limit.clone(),
        })?;
    Ok(match args.metrics {
        Some(_) => engine.with_metrics(Arc::new(Metrics::new())),
        None => engine,
    })
}

/// Serves the metrics with `--metrics` (and the driver's, `more`), and says where.
fn start_metrics(
    running: &mut run::Running,
    args: &ServeArgs,
    more: Vec<Arc<dyn Exposed>>,
) -> Result<()> {
    if let Some(addr) = args.metrics
        && let Some(bound) = run::start_metrics(running, addr, more)?
    {
        eprintln!("replayd: metrics on http://{bound}/metrics");
    }
    Ok(())
}

fn engine_summary(engine: &Engine) -> Vec<String> {
    let mut lines = vec![format!(
        "serving {} recordings for {} from {}",
        engine.len(),
        if engine.hosts().is_empty() {
            "no hosts".to_owned()
        } else {
            engine.hosts().join(", ")
        },
        engine.dir().display()
    )];
    if let Some(upstream) = engine.upstream() {
        let budget = upstream
            .budget_usd()
            .map_or_else(String::new, |b| format!(", within a budget of ${b}"));
        let what = if upstream.records() {
            "forwarding and recording"
        } else {
            "forwarding"
        };
        lines.push(format!(
            "{what} requests with no recording to the real API{budget}"
        ));
    }
    if engine.skipped() > 0 {
        lines.push(format!(
            "skipped {} incomplete recordings",
            engine.skipped()
        ));
    }
    lines
}

/// `--listen ADDR`: plain listener, no kernel hooks, until SIGINT/SIGTERM.
async fn listen(engine: Arc<Engine>, addr: SocketAddr, args: &ServeArgs) -> Result<ExitCode> {
    // TLS is a bonus here (load generators measuring HTTPS); plain HTTP works without a CA.
    let tls = match run::load_tls(args.ca_dir.as_deref()) {
        Ok(resolver) => Some(resolver),
        Err(e) => {
            eprintln!(
                "replayd: serving plain HTTP only: {:#}",
                anyhow::Error::from(e)
            );
            None
        }
    };
    let server = Server::bind(engine, tls, &[ListenAddr::required(addr)])?;
    let signal = run::shutdown_signal()?;
    let addrs = server.local_addrs();
    let mut running = server.start(None);
    start_metrics(&mut running, args, Vec::new())?;
    for addr in addrs {
        eprintln!("replayd: listening on {addr}");
    }
    running.run_until(signal).await?;
    Ok(finish(&running.finish().await))
}

/// Prints the report and picks the exit code.
fn finish(report: &Report) -> ExitCode {
    eprint!("{report}");
    if report.failed() {
        ExitCode::from(EXIT_MISSES)
    } else {
        ExitCode::SUCCESS
    }
}

/// `-- CMD`, `--cgroup PATH`, `--all`: the listener and DNS responder on
/// loopback, the kernel redirect in front of them, until the command exits or
/// SIGINT/SIGTERM.
fn redirect(args: &ServeArgs) -> Result<ExitCode> {
    let target = if !args.cmd.is_empty() {
        RedirectTarget::Command
    } else if let Some(path) = &args.cgroup {
        RedirectTarget::Cgroup(path.clone())
    } else {
        RedirectTarget::All
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let engine = Arc::new(load_engine(args, false)?);
    for line in engine_summary(&engine) {
        eprintln!("replayd: {line}");
    }
    let driver = match &args.drive {
        Some(url) => {
            let driver = Driver::new(&args.dir, url, args.drive_options.clone())?;
            Some(if args.metrics.is_some() {
                driver.with_metrics()
            } else {
                driver
            })
        }
        None => None,
    };
    runtime.block_on(serve_redirected(engine, &target, args, driver))
}

/// How a `-- CMD` run ended.
enum Ended {
    /// The command exited.
    Exited(std::io::Result<std::process::ExitStatus>),
    /// `--drive` finished driving it.
    Driven(Result<llmsim_drive::Summary, llmsim_replayd::drive::DriveAppError>),
    /// SIGINT or SIGTERM.
    Interrupted,
}

async fn serve_redirected(
    engine: Arc<Engine>,
    target: &RedirectTarget,
    args: &ServeArgs,
    driver: Option<Driver>,
) -> Result<ExitCode> {
    let ca_dir = match &args.ca_dir {
        Some(dir) => dir.clone(),
        None => ca::default_ca_dir()?,
    };
    let authority = Arc::new(ca::CertificateAuthority::load_or_create(&ca_dir)?);
    let tls = Arc::new(ca::LeafResolver::new(authority.clone())?);
    let hosts = redirect::host_addresses(
        redirect::answered_hosts(engine.hosts())
            .iter()
            .map(String::as_str),
    )?;
    let plain = redirect::plain_destinations(engine.plain_peers());
    let server = Server::bind(engine, Some(tls), &ListenAddr::loopback_defaults())?;
    let dns = run::start_dns(
        &ListenAddr::loopback_defaults(),
        dns_responder(&hosts, args.no_network),
    )
    .await?;
    let (Some(SocketAddr::V4(listener_v4)), Some(SocketAddr::V4(dns_v4))) =
        (server.local_v4(), dns.local_v4())
    else {
        bail!("replayd needs an IPv4 loopback listener and DNS responder");
    };
    let v6 = |addr: Option<SocketAddr>| match addr {
        Some(SocketAddr::V6(v6)) => Some(v6),
        _ => None,
    };
    let settings = RedirectSettings {
        listener_v4,
        listener_v6: v6(server.local_v6()),
        dns: dns_v4,
        dns_v6: v6(dns.local_v6()),
        hosts: hosts.iter().map(|(_, ip)| *ip).collect(),
        all_hosts: args.all_hosts,
    };
    let kernel = Arc::new(KernelRedirect::attach(target, &settings, &plain)?);
    let mut running = server.start(Some(kernel.clone()));
    running.watch(dns.serve());
    let driver_metrics: Vec<Arc<dyn Exposed>> = driver
        .iter()
        .filter_map(|driver| driver.metrics())
        .map(|metrics| metrics.clone() as Arc<dyn Exposed>)
        .collect();
    start_metrics(&mut running, args, driver_metrics)?;
    let signal = run::shutdown_signal()?;
    let ended = if matches!(target, RedirectTarget::Command) {
        Some(
            run_command(
                &mut running,
                &kernel,
                &authority,
                args,
                driver.as_ref(),
                signal,
            )
            .await?,
        )
    } else {
        eprintln!(
            "replayd: redirecting cgroup {}",
            kernel.cgroup_path().display()
        );
        running.run_until(signal).await?;
        None
    };
    let CommandEnd {
        child_code,
        drive_code,
        summary,
    } = ended.unwrap_or_default();
    let report = running.finish().await;
    let replay_code = finish(&report);
    if let Some(summary) = &summary {
        summary.print(args.drive_options.json);
    }
    if let Some(code) = drive_code {
        // The drive decides, and a replay that failed (a miss) fails it too.
        return Ok(ExitCode::from(if report.failed() {
            code.max(EXIT_MISSES)
        } else {
            code
        }));
    }
    Ok(match child_code {
        Some(0) | None => replay_code,
        Some(code) => ExitCode::from(code),
    })
}

/// How a `-- CMD` run ended.
#[derive(Default)]
struct CommandEnd {
    /// The command's exit code, when it exited or a signal interrupted the run.
    child_code: Option<u8>,
    /// With `--drive`: the drive's exit code.
    drive_code: Option<u8>,
    /// With `--drive`: its summary, when it ran to the end.
    summary: Option<llmsim_drive::Summary>,
}

/// Runs the command (trusting the replay CA) until it exits, `--drive` is done with
/// it, or `signal`; then stops it.
async fn run_command(
    running: &mut run::Running,
    kernel: &KernelRedirect,
    authority: &ca::CertificateAuthority,
    args: &ServeArgs,
    driver: Option<&Driver>,
    signal: impl Future<Output = run::Signal>,
) -> Result<CommandEnd> {
    let trust_dir = tempfile::tempdir().context("a directory for the CA bundle")?;
    let mut bundle = authority.trust_bundle(trust_dir.path())?;
    bundle.java_truststore = authority
        .java_truststore(trust_dir.path(), &ca::JavaTrust::default())
        .unwrap_or_else(|e| {
            eprintln!("replayd: warning: JVM apps will not trust the replay CA: {e:#}");
            None
        });
    let env = bundle.child_env(std::env::var_os("JAVA_TOOL_OPTIONS").as_deref());
    let mut child = kernel.spawn(&args.cmd, &env, args.as_root)?;
    let stats = running.engine().stats().clone();
    let driving = async {
        match driver {
            Some(driver) => llmsim_replayd::drive::drive(driver, args.drive_wait, &stats).await,
            None => std::future::pending().await,
        }
    };
    let ended = running
        .run_until(async {
            tokio::select! {
                exited = child.wait() => Ended::Exited(exited),
                outcome = driving => Ended::Driven(outcome),
                _ = signal => Ended::Interrupted,
            }
        })
        .await?;
    kernel.kill_own_cgroup();
    let mut end = CommandEnd::default();
    match ended {
        Ended::Exited(exited) => {
            let code = llmsim_kernel::sys::exit_code(exited.context("waiting for the command")?);
            if driver.is_some() {
                eprintln!("replayd: the app exited (status {code}) before the drive finished");
                end.drive_code = Some(llmsim_drive::EXIT_DIFFERENCES);
            }
            end.child_code = Some(code);
        }
        Ended::Driven(Ok(summary)) => {
            end.drive_code = Some(summary.exit_code());
            if args.metrics.is_some()
                && let Some(linger) = args.drive_options.metrics_linger
            {
                tokio::time::sleep(linger).await;
            }
            end.summary = Some(summary);
        }
        Ended::Driven(Err(e)) => {
            eprintln!("replayd: {e}");
            end.drive_code = Some(llmsim_drive::EXIT_DIFFERENCES);
        }
        Ended::Interrupted => end.child_code = Some(EXIT_INTERRUPTED),
    }
    Ok(end)
}

/// Answers for the hosts replay answers for; other names go to the machine's resolver,
/// or get NXDOMAIN with `--no-network` or when there is none.
fn dns_responder(hosts: &[(String, Ipv4Addr)], no_network: bool) -> dns::DnsResponder {
    let mut answers = dns::HostAnswers::new();
    for (host, ip) in hosts {
        answers.insert(host, *ip);
    }
    let fallback = if no_network {
        dns::Fallback::NxDomain
    } else {
        match dns::upstream_from_resolv_conf(Path::new("/etc/resolv.conf")) {
            Ok(upstream) => dns::Fallback::Upstream(upstream),
            Err(e) => {
                eprintln!("replayd: answering NXDOMAIN for unrecorded names: {e:#}");
                dns::Fallback::NxDomain
            }
        }
    };
    dns::DnsResponder::new(answers, fallback)
}

fn trust(action: &TrustAction, ca_dir: Option<PathBuf>) -> Result<ExitCode> {
    let dir = match ca_dir {
        Some(dir) => dir,
        None => ca::default_ca_dir()?,
    };
    match action {
        TrustAction::Install => {
            let authority = ca::CertificateAuthority::load_or_create(&dir)?;
            let layout = ca::trust_install(&authority)?;
            eprintln!(
                "replayd: installed {} into the system trust store ({layout})",
                authority.cert_path().display()
            );
        }
        TrustAction::Uninstall => {
            if ca::trust_uninstall(&dir)? {
                eprintln!("replayd: removed the replay CA from the system trust store");
            } else {
                eprintln!("replayd: the replay CA was not in the system trust store");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn explain_request(paths: &[PathBuf]) -> Result<ExitCode> {
    let (dir, request) = match paths {
        [request] => (PathBuf::from("llmsim"), request),
        [dir, request] => (dir.clone(), request),
        _ => bail!("expected [DIR] REQUEST.json"),
    };
    let engine = run::load_engine(&dir, ReplayOptions::default())?;
    let request = RequestFile::read(request)?.to_request()?;
    let explanation = explain(&engine, &request);
    print!("{explanation}");
    Ok(if explanation.is_hit() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_MISSES)
    })
}
