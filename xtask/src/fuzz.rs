//! `cargo xtask fuzz`: the libFuzzer targets under fuzz/ (a workspace of their own), built
//! by cargo-fuzz with the nightly pinned in ebpf/rust-toolchain.toml, each seeded with the
//! recorded traffic committed in this repository and run for a fixed time. It prints one
//! line per target with libFuzzer's figures: executions, executions per second, coverage
//! (`cov:` edges and `ft:` features from its final stats line), corpus size and crashes,
//! and fails when a target crashed, naming the saved input.
//!
//! Seeds go to fuzz/corpus/<target>/ (not committed): the example snapshot's exchange
//! files and what they carry (request and response bodies, the same traffic as HTTP/1.1
//! wire bytes, framed as SSE events and NDJSON lines, DNS queries for its host), plus the
//! small committed inputs under fuzz/seeds/<target>/ that need a real peer to make
//! (HTTP/2 frames written by the Python `h2` package, compressed bodies).

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use llmsim_snapshot::model::{Body, Exchange};

/// The example snapshot whose exchanges seed the corpora.
const SNAPSHOT: &str = "examples/triage/llmsim";
/// Exchanges taken from it: they are much alike, and a small corpus starts faster.
const SEED_EXCHANGES: usize = 12;
/// The eBPF build's toolchain file, the one place the nightly is pinned.
const TOOLCHAIN_FILE: &str = "ebpf/rust-toolchain.toml";
/// cargo-fuzz's flags for every build and run: no sanitizer (the parsers are safe Rust,
/// and a panic is what the targets look for). cargo-fuzz builds with debug assertions,
/// and so overflow checks, on.
const BUILD_FLAGS: [&str; 3] = ["--sanitizer", "none", "--fuzz-dir=fuzz"];
/// An input that takes longer than this many seconds counts as a crash (a hang).
const INPUT_TIMEOUT_SECS: u32 = 10;

/// What `cargo xtask fuzz` was asked to do.
pub struct Options {
    /// Seconds each target runs.
    pub time: u64,
    /// Only this target.
    pub target: Option<String>,
    /// Write the seed corpora and stop.
    pub seed_only: bool,
}

/// What one target's run came to.
struct Outcome {
    target: String,
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: usize,
    /// The saved input when the target crashed.
    crash: Option<String>,
}

pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    let fuzz_dir = root.join("fuzz");
    let written = seed(root, &fuzz_dir.join("corpus")).context("writing the seed corpora")?;
    eprintln!("xtask: {written} seed inputs under fuzz/corpus");
    if options.seed_only {
        return Ok(());
    }
    let toolchain = pinned_nightly(&root.join(TOOLCHAIN_FILE))?;
    let known = list_targets(root, &toolchain)?;
    let targets = match &options.target {
        Some(name) if known.contains(name) => vec![name.clone()],
        Some(name) => bail!("unknown fuzz target `{name}` (known: {})", known.join(", ")),
        None => known,
    };
    let mut build = vec!["build"];
    build.extend(BUILD_FLAGS);
    let status = cargo_fuzz(root, &toolchain, &build)
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let mut outcomes = Vec::new();
    for target in &targets {
        eprintln!("xtask: fuzzing {target} for {} s", options.time);
        outcomes.push(run_target(root, &toolchain, target, options.time)?);
    }
    println!("{}", table(&outcomes));
    let crashes: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.target, o.crash.as_ref()?)))
        .collect();
    if !crashes.is_empty() {
        bail!("crashing inputs saved: {}", crashes.join("; "));
    }
    Ok(())
}

/// `toolchain.channel` of the eBPF crate's rust-toolchain.toml.
fn pinned_nightly(path: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("{} names no toolchain channel", path.display()))
}

/// `cargo fuzz ARGS` with the pinned nightly, run from the repository root.
fn cargo_fuzz(root: &Path, toolchain: &str, args: &[&str]) -> Command {
    let mut command = crate::without_package_env(Command::new("rustup"));
    command
        .args(["run", toolchain, "cargo", "fuzz"])
        .args(args)
        .current_dir(root);
    command
}

fn list_targets(root: &Path, toolchain: &str) -> anyhow::Result<Vec<String>> {
    let output = cargo_fuzz(root, toolchain, &["list", "--fuzz-dir=fuzz"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo fuzz list (scripts/setup.sh installs cargo-fuzz)")?;
    if !output.status.success() {
        bail!("cargo fuzz list failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn run_target(root: &Path, toolchain: &str, target: &str, secs: u64) -> anyhow::Result<Outcome> {
    // 0 s: each input of the corpus once and nothing new, so the suite's pass is the same
    // every run; a crash found by longer runs joins it as a regression input.
    let max_time = if secs == 0 {
        "-runs=0".to_owned()
    } else {
        format!("-max_total_time={secs}")
    };
    let timeout = format!("-timeout={INPUT_TIMEOUT_SECS}");
    let mut args = vec!["run", target];
    args.extend(BUILD_FLAGS);
    args.extend([
        "--",
        max_time.as_str(),
        timeout.as_str(),
        "-print_final_stats=1",
    ]);
    let mut child = cargo_fuzz(root, toolchain, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo fuzz run")?;
    let mut log = String::new();
    child
        .stderr
        .take()
        .context("cargo fuzz stderr")?
        .read_to_string(&mut log)
        .context("reading libFuzzer's output")?;
    let status = child.wait().context("waiting for cargo fuzz run")?;
    let crash = log
        .lines()
        .find_map(|l| l.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_owned());
    if !status.success() && crash.is_none() {
        bail!("fuzzing {target} failed ({status}):\n{}", tail(&log, 30));
    }
    if crash.is_some() {
        eprintln!("{}", tail(&log, 40));
    }
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
    };
    // The last status line (`#N DONE cov: C ft: F corp: ...`) holds the final coverage.
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains(" cov: "))
        .unwrap_or("");
    let field = |name: &str| {
        let mut words = last.split_whitespace();
        words.find(|w| *w == name)?;
        words.next()?.parse().ok()
    };
    let corpus = fs::read_dir(root.join("fuzz/corpus").join(target)).map_or(0, Iterator::count);
    Ok(Outcome {
        target: target.to_owned(),
        executions: stat("number_of_executed_units"),
        exec_per_sec: stat("average_exec_per_sec"),
        cov: field("cov:"),
        ft: field("ft:"),
        corpus,
        crash,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn table(outcomes: &[Outcome]) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut out = format!(
        "{:<18} {:>12} {:>9} {:>7} {:>7} {:>7} {:>8}",
        "target", "executions", "exec/s", "cov", "ft", "corpus", "crashes"
    );
    for o in outcomes {
        let _ = write!(
            out,
            "\n{:<18} {:>12} {:>9} {:>7} {:>7} {:>7} {:>8}",
            o.target,
            show(o.executions),
            show(o.exec_per_sec),
            show(o.cov),
            show(o.ft),
            o.corpus,
            usize::from(o.crash.is_some()),
        );
    }
    out
}

/// Writes every target's seeds into `corpus/<target>/`; returns how many.
fn seed(root: &Path, corpus: &Path) -> anyhow::Result<usize> {
    let mut seeds = Seeds {
        corpus: corpus.to_owned(),
        written: 0,
    };
    let snapshot = llmsim_snapshot::store::load(&root.join(SNAPSHOT))
        .with_context(|| format!("loading {SNAPSHOT}"))?;
    for (i, recorded) in snapshot.exchanges.iter().take(SEED_EXCHANGES).enumerate() {
        let file = fs::read(&recorded.path)
            .with_context(|| format!("reading {}", recorded.path.display()))?;
        seeds.write("snapshot_load", &format!("exchange-{i}"), &file)?;
        seed_exchange(&mut seeds, i, &recorded.exchange)?;
    }
    for host in ["api.openai.com", "unknown.example"] {
        // QTYPE 1 is A, 28 AAAA.
        for qtype in [1, 28] {
            let name = format!("query-{host}-{qtype}");
            seeds.write("dns", &name, &dns_query(0x1234, host, qtype))?;
        }
    }
    // Inputs that need a real peer to make, committed as they are.
    let committed = root.join("fuzz/seeds");
    for dir in fs::read_dir(&committed).with_context(|| format!("{}", committed.display()))? {
        let dir = dir?;
        let target = dir.file_name().to_string_lossy().into_owned();
        for file in fs::read_dir(dir.path())? {
            let file = file?;
            let bytes = fs::read(file.path())?;
            seeds.write(&target, &file.file_name().to_string_lossy(), &bytes)?;
        }
    }
    Ok(seeds.written)
}

struct Seeds {
    corpus: PathBuf,
    written: usize,
}

impl Seeds {
    fn write(&mut self, target: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let dir = self.corpus.join(target);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("seed-{name}"));
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        self.written += 1;
        Ok(())
    }
}

/// Seeds from one recorded exchange, in each target's input layout (see the targets).
fn seed_exchange(seeds: &mut Seeds, i: usize, exchange: &Exchange) -> anyhow::Result<()> {
    let request_body = exchange.request.body.to_bytes();
    let response_body = exchange.response.body.to_bytes();
    seeds.write("signer", &format!("request-{i}"), &request_body)?;
    // content_decoding: the first byte picks the content type (1: application/json) and
    // the coding (none); then the body.
    seeds.write(
        "content_decoding",
        &format!("response-{i}"),
        &[&[1], &response_body[..]].concat(),
    )?;
    // redactor: kind, position, delimiters and carrier, then the text.
    let carrier = u8::try_from(i % 7).unwrap_or(0);
    let mut redactor = vec![u8::try_from(i % 5).unwrap_or(0), 40, 1, 2, carrier];
    redactor.extend_from_slice(&request_body);
    seeds.write("redactor", &format!("request-{i}"), &redactor)?;

    // The same documents as server-sent events (OpenAI's framing, then Anthropic's with
    // event names and CRLF) and as NDJSON lines (Ollama's).
    let documents: Vec<Vec<u8>> = [&exchange.request.body, &exchange.response.body]
        .into_iter()
        .filter_map(Body::json)
        .map(|json| json.to_string().into_bytes())
        .collect();
    let mut sse = Vec::new();
    let mut sse_named = Vec::new();
    let mut ndjson = Vec::new();
    for doc in &documents {
        sse.extend_from_slice(b"data: ");
        sse.extend_from_slice(doc);
        sse.extend_from_slice(b"\n\n");
        sse_named.extend_from_slice(b"event: message_delta\r\ndata: ");
        sse_named.extend_from_slice(doc);
        sse_named.extend_from_slice(b"\r\n\r\n");
        ndjson.extend_from_slice(doc);
        ndjson.push(b'\n');
    }
    sse.extend_from_slice(b"data: [DONE]\n\n");
    let seed = u8::try_from(i).unwrap_or(0);
    seeds.write("sse", &format!("openai-{i}"), &[&[seed], &sse[..]].concat())?;
    seeds.write(
        "sse",
        &format!("anthropic-{i}"),
        &[&[seed], &sse_named[..]].concat(),
    )?;
    seeds.write(
        "ndjson",
        &format!("ollama-{i}"),
        &[&[seed], &ndjson[..]].concat(),
    )?;

    // HTTP/1.1: the exchange as wire bytes, the response alternately with a
    // Content-Length and chunked.
    let (request, response) = http1_wire(exchange, &request_body, &response_body, i % 2 == 1);
    let Ok(client_len) = u16::try_from(request.len()) else {
        return Ok(());
    };
    let mut http1 = vec![seed];
    http1.extend_from_slice(&client_len.to_le_bytes());
    http1.extend_from_slice(&request);
    http1.extend_from_slice(&response);
    seeds.write("http1", &format!("exchange-{i}"), &http1)
}

fn http1_wire(
    exchange: &Exchange,
    request_body: &[u8],
    response_body: &[u8],
    chunked: bool,
) -> (Vec<u8>, Vec<u8>) {
    let framing = |name: &str| {
        ["content-length", "transfer-encoding", "content-encoding"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f))
    };
    let request = &exchange.request;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        request.method, request.path, exchange.host
    );
    for (name, value) in request.headers.iter().filter(|(n, _)| !framing(n)) {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(head, "content-length: {}\r\n\r\n", request_body.len());
    let mut request_bytes = head.into_bytes();
    request_bytes.extend_from_slice(request_body);

    let response = &exchange.response;
    let mut head = format!("HTTP/1.1 {} OK\r\n", response.status);
    for (name, value) in response.headers.iter().filter(|(n, _)| !framing(n)) {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let mut response_bytes;
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
        response_bytes = head.into_bytes();
        for chunk in response_body.chunks(100) {
            response_bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            response_bytes.extend_from_slice(chunk);
            response_bytes.extend_from_slice(b"\r\n");
        }
        response_bytes.extend_from_slice(b"0\r\n\r\n");
    } else {
        let _ = write!(head, "content-length: {}\r\n\r\n", response_body.len());
        response_bytes = head.into_bytes();
        response_bytes.extend_from_slice(response_body);
    }
    (request_bytes, response_bytes)
}

/// A DNS query (RFC 1035) for `name`, recursion desired, class IN.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    // Flags: RD; one question, no other records.
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        packet.push(u8::try_from(label.len()).unwrap_or(63));
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pinned_nightly() {
        let root = llmsim_tests::repo_root();
        let toolchain = pinned_nightly(&root.join(TOOLCHAIN_FILE)).unwrap();
        assert!(toolchain.starts_with("nightly-"), "{toolchain}");
    }
}
