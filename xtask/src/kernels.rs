//! `cargo xtask kernels`: the privileged core of the suite (capture of openai-python and of
//! node, offline replay, the redirect kill test) on other kernels than the host's, each
//! booted under QEMU by virtme-ng (`PyPI`, pinned in `scripts/setup.sh`) over the host's root
//! filesystem, shared read-only with writable overlays, so the guest runs the test
//! executables, binaries, Python SDKs and Node clients built and installed on the host and
//! compiles nothing. Kernels come from Debian's archive (`apt-get download` of the newest
//! `linux-image-*-amd64-unsigned` of a series, unpacked into `target/kernels/`, never
//! installed); `host` runs the same tests on the running kernel without a VM. Each kernel
//! gets one row: tests passed and failed, seconds; any failure makes the task fail.
//!
//! QEMU uses KVM when the host's KVM is hardware virtualisation (`kvm_intel`, `kvm_amd`);
//! a KVM without it (PVM, whose guests must be built for it) cannot boot a distribution
//! kernel, and QEMU then emulates the CPU (TCG), several times slower.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use llmsim_tests::kernels::{IN_VM_ENV, hardware_kvm};

use crate::cargo_command;

/// The privileged core: (test executable, test name, whether it needs the agent's probes,
/// so a kernel older than the agent's minimum runs it only as the refusal check below).
const CORE: &[(&str, &str, bool)] = &[
    ("capture", "captures_openai_python_plain_and_streamed", true),
    (
        "capture",
        "captures_openai_node_with_its_static_openssl",
        true,
    ),
    // Records with the agent first, then replays.
    (
        "replay",
        "openai_python_replays_offline_from_its_recording",
        true,
    ),
    // replayd alone (DNS answers, the redirect, TLS, the miss answer), with curl.
    (
        "replay_spend_leak",
        "an_unrecorded_provider_host_is_a_miss_and_never_reached",
        false,
    ),
    (
        "replay_daemon",
        "a_cgroup_is_served_until_replayd_is_killed_and_then_not_redirected",
        true,
    ),
    // Every kernel: below 5.17 the agent refuses in one line, from 5.17 on it runs.
    (
        "capture_bad_input",
        "a_kernel_older_than_5_17_is_refused_in_one_line",
        false,
    ),
];

/// A Debian kernel series the matrix knows.
struct Series {
    /// Its name on the command line.
    name: &'static str,
    /// The package name pattern, for `apt-cache search --names-only`.
    pattern: &'static str,
    /// Whether it is new enough for the agent's probes (5.17); an older one runs the core's
    /// tests that do not need them.
    agent: bool,
}

/// Oldest first: 5.10 is Debian 11's, the oldest the archive still serves.
const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        pattern: r"^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$",
        agent: false,
    },
    Series {
        name: "6.1",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
        agent: true,
    },
    Series {
        name: "6.12",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
        agent: true,
    },
];

/// The Debian suites the kernels come from, as an apt sources file of the matrix's own: the
/// host's apt lists hold only its own release, and the matrix never changes them.
const APT_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
";

/// Memory given to a guest.
const GUEST_MEMORY: &str = "3G";
/// How long one guest may run before it is killed and its kernel counted as failed.
const GUEST_TIMEOUT: Duration = Duration::from_mins(30);

/// `cargo xtask kernels` options.
#[derive(clap::Args)]
pub struct Args {
    /// Kernels to run on, comma-separated: 5.10, 6.1, 6.12, host, or all.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    kernel: Vec<String>,
    /// Run this test (`EXECUTABLE::TEST`, repeatable) instead of the privileged core.
    #[arg(long = "test", value_name = "EXECUTABLE::TEST")]
    tests: Vec<String>,
}

/// One kernel of the matrix.
enum Kernel {
    /// The running kernel, without a VM.
    Host,
    /// A Debian series, booted under QEMU.
    Debian(&'static Series),
}

impl Kernel {
    fn parse(name: &str) -> anyhow::Result<Vec<Self>> {
        match name {
            "all" => Ok(SERIES
                .iter()
                .map(Kernel::Debian)
                .chain(std::iter::once(Kernel::Host))
                .collect()),
            "host" => Ok(vec![Kernel::Host]),
            other => SERIES
                .iter()
                .find(|series| series.name == other)
                .map(|series| vec![Kernel::Debian(series)])
                .with_context(|| {
                    let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
                    format!(
                        "unknown kernel `{other}` (known: {}, host, all)",
                        known.join(", ")
                    )
                }),
        }
    }
}

/// One test to run: its executable's path and its name.
#[derive(Clone)]
struct TestCase {
    executable: PathBuf,
    target: String,
    name: String,
    /// Whether it needs the agent's probes (run only on kernels new enough for them).
    needs_agent: bool,
}

/// What one test did on one kernel.
struct Outcome {
    target: String,
    name: String,
    passed: bool,
    seconds: f64,
    log: PathBuf,
}

/// A row of the table.
struct Row {
    kernel: String,
    outcomes: Vec<Outcome>,
    seconds: f64,
    /// Why the kernel could not run its tests at all.
    error: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut kernels = Vec::new();
    for name in &args.kernel {
        kernels.extend(Kernel::parse(name)?);
    }
    let wanted: Vec<(String, String, bool)> = if args.tests.is_empty() {
        CORE.iter()
            .map(|&(t, n, agent)| (t.to_owned(), n.to_owned(), agent))
            .collect()
    } else {
        // Asked for by name: run everywhere.
        args.tests
            .iter()
            .map(|spec| {
                spec.split_once("::")
                    .map(|(t, n)| (t.to_owned(), n.to_owned(), false))
                    .with_context(|| format!("--test `{spec}` is not EXECUTABLE::TEST"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let root = llmsim_tests::repo_root();
    crate::cargo(&["build", "--bins"])?;
    let tests = build_tests(&wanted)?;
    let cache = root.join("target/kernels");
    let accel = Accel::detect();
    if kernels.iter().any(|k| matches!(k, Kernel::Debian(_))) {
        eprintln!("xtask: QEMU acceleration: {}", accel.describe());
        update_apt_lists(&cache)?;
    }

    let mut rows = Vec::new();
    for kernel in &kernels {
        let started = Instant::now();
        let (name, result) = match kernel {
            Kernel::Host => (
                format!("host {}", host_release()),
                run_on_host(&tests, &cache.join("run/host")),
            ),
            Kernel::Debian(series) => {
                let tests: Vec<TestCase> = tests
                    .iter()
                    .filter(|t| series.agent || !t.needs_agent)
                    .cloned()
                    .collect();
                match fetch_kernel(&cache, series.pattern) {
                    Ok((release, vmlinuz)) => (
                        format!("{} ({release})", series.name),
                        run_in_vm(
                            &vmlinuz,
                            &accel,
                            &tests,
                            &cache.join(format!("run/{}", series.name)),
                        ),
                    ),
                    Err(e) => (series.name.to_owned(), Err(e)),
                }
            }
        };
        let (outcomes, error) = match result {
            Ok(outcomes) => (outcomes, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        rows.push(Row {
            kernel: name,
            outcomes,
            seconds: started.elapsed().as_secs_f64(),
            error,
        });
    }
    print!("{}", table(&rows, tests.len()));
    let failed = rows
        .iter()
        .filter(|row| row.error.is_some() || row.outcomes.iter().any(|o| !o.passed))
        .count();
    ensure!(failed == 0, "{failed} of {} kernels failed", rows.len());
    Ok(())
}

/// The release of the running kernel (`uname -r`).
fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// Builds the test executables holding `wanted` (without running them) and returns where
/// each test is.
fn build_tests(wanted: &[(String, String, bool)]) -> anyhow::Result<Vec<TestCase>> {
    let mut targets: Vec<&str> = wanted.iter().map(|(t, _, _)| t.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    let mut args = vec![
        "test",
        "-p",
        "llmsim-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    for target in &targets {
        args.extend(["--test", target]);
    }
    eprintln!("xtask: cargo {}", args.join(" "));
    let output = cargo_command()
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    ensure!(
        output.status.success(),
        "cargo test --no-run failed ({})",
        output.status
    );
    let mut executables = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            executables.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    wanted
        .iter()
        .map(|(target, name, needs_agent)| {
            let executable = executables
                .iter()
                .find(|(t, _)| t == target)
                .map(|(_, e)| e.clone())
                .with_context(|| format!("cargo built no test executable `{target}`"))?;
            Ok(TestCase {
                executable,
                target: target.clone(),
                name: name.clone(),
                needs_agent: *needs_agent,
            })
        })
        .collect()
}

/// `apt-get` or `apt-cache` reading the matrix's own sources ([`APT_SOURCES`]) and lists
/// under `cache/apt`, not the host's.
fn apt(program: &str, cache: &Path) -> Command {
    let apt = cache.join("apt");
    let mut cmd = Command::new(program);
    for (option, path) in [
        ("Dir::Etc::SourceList", apt.join("sources.list")),
        ("Dir::Etc::SourceParts", apt.join("sources.list.d")),
        ("Dir::State::Lists", apt.join("lists")),
        ("Dir::Cache", apt.join("cache")),
    ] {
        cmd.arg("-o").arg(format!("{option}={}", path.display()));
    }
    cmd
}

/// Refreshes the matrix's apt lists, so the newest kernel of each series is found.
fn update_apt_lists(cache: &Path) -> anyhow::Result<()> {
    let dir = cache.join("apt");
    for sub in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    std::fs::write(dir.join("sources.list"), APT_SOURCES)?;
    eprintln!(
        "xtask: apt-get update (Debian 11 and 12 lists, under {})",
        dir.display()
    );
    let status = apt("apt-get", cache)
        .args(["update", "-q"])
        .stdout(Stdio::null())
        .status()
        .context("running apt-get update")?;
    ensure!(status.success(), "apt-get update failed ({status})");
    Ok(())
}

/// The newest package matching `pattern` in the matrix's apt lists, downloaded and unpacked
/// under `cache` unless it already is; returns the kernel release and its `vmlinuz`.
fn fetch_kernel(cache: &Path, pattern: &str) -> anyhow::Result<(String, PathBuf)> {
    let output = apt("apt-cache", cache)
        .args(["search", "--names-only", pattern])
        .output()
        .context("running apt-cache search")?;
    ensure!(output.status.success(), "apt-cache search {pattern} failed");
    let package = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
        .with_context(|| format!("apt knows no package matching {pattern}"))?;
    let unpacked = cache.join("root").join(&package);
    if !unpacked.join("boot").is_dir() {
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        eprintln!("xtask: downloading {package}");
        let status = apt("apt-get", cache)
            .args(["download", "-q", &package])
            .current_dir(&debs)
            .status()
            .context("running apt-get download")?;
        ensure!(
            status.success(),
            "apt-get download {package} failed ({status})"
        );
        let deb = std::fs::read_dir(&debs)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        let partial = cache.join("root").join(format!("{package}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&partial)
            .status()
            .context("running dpkg-deb -x")?;
        ensure!(
            status.success(),
            "dpkg-deb -x {} failed ({status})",
            deb.display()
        );
        std::fs::rename(&partial, &unpacked)?;
        // The unpacked tree is all the matrix needs; the package only takes space.
        std::fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    }
    let vmlinuz = std::fs::read_dir(unpacked.join("boot"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}/boot", unpacked.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| {
            n.to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Ok((release, vmlinuz))
}

/// The numbers in a package name, in order, for picking the newest of a series.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// How QEMU runs the guest's CPU.
enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// Emulation, with the reason KVM is not used.
    Tcg(&'static str),
}

impl Accel {
    fn detect() -> Self {
        if !Path::new("/dev/kvm").exists() {
            Accel::Tcg("no /dev/kvm")
        } else if hardware_kvm() {
            Accel::Kvm
        } else {
            Accel::Tcg(
                "/dev/kvm is not hardware virtualisation (no kvm_intel or kvm_amd module) and cannot boot a distribution kernel",
            )
        }
    }

    fn describe(&self) -> String {
        match self {
            Accel::Kvm => "KVM".to_owned(),
            Accel::Tcg(why) => format!("TCG emulation, several times slower: {why}"),
        }
    }
}

/// The shell script that runs `tests` one after another, writing each one's log and a
/// `results` line (`TARGET NAME EXIT_CODE MILLISECONDS`) into `out`; in a guest (`in_vm`) it
/// also sets [`IN_VM_ENV`]. `PATH` and `HOME` are
/// the caller's, so that a guest finds the same Python, Node and packages; the directory of
/// the Python interpreter itself comes first, so that a version manager's shim (a shell
/// script, seconds per start in an emulated guest) is not in the way.
fn runner_script(tests: &[TestCase], out: &Path, in_vm: bool) -> anyhow::Result<String> {
    let root = llmsim_tests::repo_root();
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Ok(output) = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.dirname(os.path.realpath(sys.executable)))",
        ])
        .output()
        && output.status.success()
    {
        path = format!("{}:{path}", String::from_utf8_lossy(&output.stdout).trim());
    }
    let mut script = String::from("#!/bin/sh\n");
    for (name, value) in [
        ("PATH", path),
        ("HOME", std::env::var("HOME").unwrap_or_default()),
    ] {
        writeln!(script, "export {name}={}", quote(&value))?;
    }
    writeln!(script, "export CI=true")?;
    if in_vm {
        writeln!(script, "export {IN_VM_ENV}=1")?;
    }
    writeln!(script, "cd {}", quote(&root.to_string_lossy()))?;
    writeln!(
        script,
        ": > {}",
        quote(&out.join("results").to_string_lossy())
    )?;
    for test in tests {
        let log = out.join(format!("{}.{}.log", test.target, test.name));
        writeln!(
            script,
            "start=$(date +%s%N)\n\
             {} --exact {} --nocapture > {} 2>&1\n\
             rc=$?\n\
             echo \"{} {} $rc $(( ($(date +%s%N) - start) / 1000000 ))\" >> {}",
            quote(&test.executable.to_string_lossy()),
            quote(&test.name),
            quote(&log.to_string_lossy()),
            test.target,
            test.name,
            quote(&out.join("results").to_string_lossy()),
        )?;
    }
    Ok(script)
}

/// `value` in single quotes for sh.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Reads the `results` file a runner script wrote.
fn read_results(tests: &[TestCase], out: &Path) -> anyhow::Result<Vec<Outcome>> {
    let path = out.join("results");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let outcomes: Vec<Outcome> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (target, name, rc, ms) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            let ms: f64 = ms.parse().ok()?;
            Some(Outcome {
                target: target.to_owned(),
                name: name.to_owned(),
                passed: rc == "0",
                seconds: ms / 1e3,
                log: out.join(format!("{target}.{name}.log")),
            })
        })
        .collect();
    ensure!(
        outcomes.len() == tests.len(),
        "{} has {} results for {} tests: the run stopped early",
        path.display(),
        outcomes.len(),
        tests.len()
    );
    Ok(outcomes)
}

/// A fresh, empty directory for one kernel's logs and results.
fn fresh_dir(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

fn run_on_host(tests: &[TestCase], out: &Path) -> anyhow::Result<Vec<Outcome>> {
    fresh_dir(out)?;
    let script = out.join("run.sh");
    std::fs::write(&script, runner_script(tests, out, false)?)?;
    let status = Command::new("sh")
        .arg(&script)
        .env_remove(IN_VM_ENV)
        .status()
        .context("running the tests on the host")?;
    ensure!(status.success(), "the runner script failed ({status})");
    read_results(tests, out)
}

fn run_in_vm(
    vmlinuz: &Path,
    accel: &Accel,
    tests: &[TestCase],
    out: &Path,
) -> anyhow::Result<Vec<Outcome>> {
    fresh_dir(out)?;
    let script = out.join("run.sh");
    std::fs::write(&script, runner_script(tests, out, true)?)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let mut vng = Command::new("vng");
    vng.arg("--run")
        .arg(vmlinuz)
        .args(["--cpus", &cpus.to_string(), "--memory", GUEST_MEMORY])
        .arg("--rwdir")
        .arg(out)
        .arg("--exec")
        .arg(format!("sh {}", quote(&script.to_string_lossy())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if matches!(accel, Accel::Tcg(_)) {
        vng.arg("--disable-kvm");
    }
    let mut child = vng
        .spawn()
        .context("starting vng (virtme-ng; run scripts/setup.sh)")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest ran longer than {GUEST_TIMEOUT:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    // Without udev in the guest virtme-ng cannot always hand back the script's exit code,
    // so the results file, not vng's status, says whether the tests ran.
    read_results(tests, out).with_context(|| format!("vng exited ({status}): {}", stderr.trim()))
}

/// The table: one row per kernel, then each failed test with the end of its log.
fn table(rows: &[Row], tests: usize) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n{:<34} {:>6} {:>6} {:>8}",
        "kernel", "passed", "failed", "seconds"
    );
    for row in rows {
        let passed = row.outcomes.iter().filter(|o| o.passed).count();
        let failed = if row.error.is_some() {
            tests - passed
        } else {
            row.outcomes.len() - passed
        };
        let _ = writeln!(
            text,
            "{:<34} {passed:>6} {failed:>6} {:>8.0}",
            row.kernel, row.seconds
        );
    }
    for row in rows {
        if let Some(error) = &row.error {
            let _ = writeln!(text, "\n{}: {error}", row.kernel);
        }
        for outcome in row.outcomes.iter().filter(|o| !o.passed) {
            let log = std::fs::read_to_string(&outcome.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let _ = writeln!(
                text,
                "\n{}: {}::{} FAILED after {:.0} s ({}):",
                row.kernel,
                outcome.target,
                outcome.name,
                outcome.seconds,
                outcome.log.display()
            );
            for line in tail.iter().rev() {
                let _ = writeln!(text, "    {line}");
            }
        }
    }
    text
}
