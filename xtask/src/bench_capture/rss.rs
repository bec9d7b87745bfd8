//! `cargo xtask bench capture --only rss`: the agent's memory under `--all`
//! while curl downloads 1 GiB over HTTPS from the bench's nginx (64 fetches of
//! a 16 MiB file on one keep-alive connection to `localhost`, a host the
//! default filter does not record). It reports the agent's peak RSS (`VmHWM`)
//! once attached and idle, and after the download, with the calls and bytes
//! the kernel skipped and the plaintext that still reached the agent. The
//! download should not grow the agent's memory: the connection is skipped in
//! the kernel once its SNI is known.

use std::{
    ffi::OsString,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use llmsim_tests::TestCa;

use super::RunningAgent;
use crate::bench_support::Nginx;

/// The file fetched, and how many times: 1 GiB in all.
const FILE_BYTES: usize = 16 << 20;
const FETCHES: u32 = 64;

/// Runs the part and prints its figures.
pub fn run(agent: &Path, curl: &Path, nginx: &Path, ca: &TestCa) -> anyhow::Result<()> {
    let work = ca.dir().join("rss");
    fs::create_dir_all(&work).context("creating the rss scratch directory")?;
    let server = Nginx::start(nginx, &work, b"{}", ca)?;
    fs::write(server.files.join("big"), vec![b'x'; FILE_BYTES])
        .context("writing the file to download")?;
    let port = server.https.port();
    let args: Vec<OsString> = vec![
        "capture".into(),
        "--all".into(),
        "--json".into(),
        "--out".into(),
        work.join("capture").into_os_string(),
    ];
    let running = RunningAgent::start(agent, &args, None, Stdio::null())?;
    let pid = running.child.id();
    // Settled: the processes already running are attached to.
    thread::sleep(Duration::from_secs(2));
    let idle = peak_rss_kib(pid)?;
    let status = Command::new(curl)
        .args(["--http1.1", "--silent", "--fail", "--output", "/dev/null"])
        .arg("--cacert")
        .arg(ca.ca_cert_path())
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!(
            "https://localhost:{port}/files/big?i=[1-{FETCHES}]"
        ))
        .status()
        .context("starting the download")?;
    ensure!(status.success(), "the download failed ({status})");
    // The ring drains every 10 ms: whatever reached it is handled by now.
    thread::sleep(Duration::from_secs(1));
    let loaded = peak_rss_kib(pid)?;
    let summary = running.finish(true)?;
    drop(server);
    let _ = fs::remove_dir_all(&work);
    let total = FILE_BYTES as u64 * u64::from(FETCHES);
    println!(
        "\nagent memory under --all during a {} MiB HTTPS download (curl -> localhost, not recorded):\n  \
         peak RSS {idle} KiB attached and idle, {loaded} KiB after the download ({:+} KiB)\n  \
         the kernel skipped {} calls, {} bytes; {} plaintext bytes reached the agent; \
         {} exchanges ignored; {} events dropped",
        total >> 20,
        i128::from(loaded) - i128::from(idle),
        summary.skipped_calls,
        summary.skipped_bytes,
        summary.plaintext_bytes,
        summary.ignored,
        summary.dropped,
    );
    Ok(())
}

/// The peak resident set size (`VmHWM`, KiB) of process `pid`.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}
