//! Shared pieces of the `capture_*` end-to-end tests: running `llmsim-agent capture` as a child
//! whose output is read while it runs (its start line and live lines are the synchronisation
//! points, never sleeps), the step-by-step client `openai_steps.py`, reading a snapshot back,
//! and checking the `--json` summary against what is on disk.
#![allow(
    dead_code,
    reason = "each capture_* test file uses its own subset of these helpers"
)]

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use llmsim_snapshot::model::Exchange;
use llmsim_tests::{
    ChildGuard, FakeProvider, ProviderRequest, TEST_API_KEYS, TestCa, TestNetns, client_argv,
    configure_client_env, llmsim_agent,
};
use serde_json::Value;

/// How long a capture or a client step may take in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The lines read so far, and whether the stream ended.
type Shared = Arc<(Mutex<(Vec<String>, bool)>, Condvar)>;

/// Lines of a stream, collected by a background thread; waits have deadlines.
#[derive(Clone)]
pub struct Output {
    shared: Shared,
    what: String,
}

impl Output {
    /// Starts reading `reader` line by line.
    pub fn new(reader: impl Read + Send + 'static, what: &str) -> Self {
        let shared = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let writer = Arc::clone(&shared);
        thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut line = Vec::new();
                let n = reader.read_until(b'\n', &mut line).unwrap_or(0);
                let (lock, cvar) = &*writer;
                let mut state = lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if n == 0 {
                    state.1 = true;
                    cvar.notify_all();
                    return;
                }
                let text = String::from_utf8_lossy(&line);
                state.0.push(text.trim_end_matches(['\n', '\r']).to_owned());
                cvar.notify_all();
            }
        });
        Output {
            shared,
            what: what.to_owned(),
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// All lines so far as one text.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until some line (seen before or later) satisfies `pred`; returns it. Panics at the
    /// deadline or at end of stream, showing the lines and `context()`.
    pub fn wait_for(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
        context: impl FnOnce() -> String,
    ) -> String {
        self.wait_for_nth(1, pred, timeout, context)
    }

    /// Waits until `n` lines satisfy `pred`; returns the `n`th.
    pub fn wait_for_nth(
        &self,
        n: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
        context: impl FnOnce() -> String,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut state = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(line) = state.0.iter().filter(|l| pred(l)).nth(n - 1) {
                return line.clone();
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                let why = if state.1 {
                    "the stream ended"
                } else {
                    "the deadline passed"
                };
                let seen = state.0.join("\n");
                drop(state);
                panic!(
                    "waiting for line {n} matching in {}: {why} ({timeout:?})\n--- lines ---\n{seen}\n{}",
                    self.what,
                    context()
                );
            }
            state = cvar
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for the end of the stream (the writer exited); returns every line.
    pub fn wait_closed(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut state = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !state.1 {
            let now = Instant::now();
            assert!(
                now < deadline,
                "{} did not end within {timeout:?}:\n{}",
                self.what,
                state.0.join("\n")
            );
            state = cvar
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        state.0.clone()
    }
}

/// A running `llmsim-agent capture`, its stdout and stderr read as they come.
pub struct Agent {
    pub child: ChildGuard,
    stdin: Option<ChildStdin>,
    pub stdout: Output,
    pub stderr: Output,
    pub out: PathBuf,
}

/// What a finished capture printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// The `--json` summary (Null without `--json`).
    pub summary: Value,
}

impl Finished {
    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "capture exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }

    /// The live lines the agent printed (one per exchange written).
    pub fn live_lines(&self) -> Vec<&str> {
        self.stderr
            .iter()
            .map(String::as_str)
            .filter(|l| is_live_line(l))
            .collect()
    }

    /// Asserts that the agent printed exactly one error line, naming the exchanges
    /// directory of `out` and `cause` (a write error the capture reports and ends on).
    pub fn assert_one_write_error(&self, out: &Path, cause: &str) {
        let errors: Vec<&String> = self
            .stderr
            .iter()
            .filter(|l| {
                l.starts_with("llmsim-agent: ") && !l.starts_with("llmsim-agent: capturing ")
            })
            .collect();
        assert_eq!(errors.len(), 1, "one error line:\n{}", self.dump());
        assert!(
            errors[0].contains(&out.join("exchanges").display().to_string())
                && errors[0].contains(cause),
            "the line names the directory and the cause:\n{}",
            self.dump()
        );
    }

    /// stdout lines that are not part of the summary (a command's own output).
    pub fn command_stdout(&self) -> Vec<&str> {
        match split_summary(&self.stdout) {
            Some((line, column, _)) => {
                let mut lines: Vec<&str> = self.stdout[..line].iter().map(String::as_str).collect();
                if column > 0 {
                    lines.push(&self.stdout[line][..column]);
                }
                lines
            }
            None => self.stdout.iter().map(String::as_str).collect(),
        }
    }
}

/// Whether `line` is a live line: `<provider> <METHOD> <path> ... pid N`.
pub fn is_live_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let (Some(_provider), Some(method), Some(path)) = (words.next(), words.next(), words.next())
    else {
        return false;
    };
    method.chars().all(|c| c.is_ascii_uppercase())
        && path.starts_with('/')
        && line.contains(" pid ")
}

/// Where the pretty-printed `--json` summary starts (line and column of its `{`, which follows
/// whatever a command printed without a final newline), and the summary itself.
fn split_summary(stdout: &[String]) -> Option<(usize, usize, Value)> {
    (0..stdout.len()).rev().find_map(|line| {
        let column = stdout[line].rfind('{')?;
        if column + 1 != stdout[line].len() {
            return None;
        }
        let mut text = stdout[line][column..].to_owned();
        for rest in &stdout[line + 1..] {
            text.push('\n');
            text.push_str(rest);
        }
        let summary: Value = serde_json::from_str(&text).ok()?;
        summary
            .get("exchanges_written")
            .is_some()
            .then_some((line, column, summary))
    })
}

impl Agent {
    /// `llmsim-agent capture --out <out> --json ARGS...`, with the client environment (test CA,
    /// test keys) so a `-- CMD` gets it too. Waits for the start line.
    pub fn start(out: &Path, ca: &TestCa, args: &[OsString]) -> Agent {
        let agent = Self::spawn_with(out, ca, args, |_| {});
        agent.wait_started();
        agent
    }

    /// Like [`Agent::start`], with `adjust` applied to the command (environment, stdin) and
    /// without waiting for the start line.
    pub fn spawn_with(
        out: &Path,
        ca: &TestCa,
        args: &[OsString],
        adjust: impl FnOnce(&mut Command),
    ) -> Agent {
        let mut cmd = Command::new(llmsim_agent());
        cmd.arg("capture")
            .arg("--out")
            .arg(out)
            .arg("--json")
            .args(args);
        configure_client_env(&mut cmd, ca);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = ChildGuard::spawn(&mut cmd, "llmsim-agent capture");
        let stdin = child.child_mut().stdin.take();
        let stdout = Output::new(
            child.child_mut().stdout.take().expect("piped"),
            "agent stdout",
        );
        let stderr = Output::new(
            child.child_mut().stderr.take().expect("piped"),
            "agent stderr",
        );
        Agent {
            child,
            stdin,
            stdout,
            stderr,
            out: out.to_path_buf(),
        }
    }

    /// Writes a line to the agent's stdin (which a `-- CMD` inherits); needs `Stdio::piped()`.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the agent's stdin is piped");
        writeln!(stdin, "{line}").expect("writing to the agent's stdin");
        stdin.flush().expect("flushing the agent's stdin");
    }

    /// Closes the agent's stdin.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for `llmsim-agent: capturing ...`: the probes are attached from then on.
    pub fn wait_started(&self) {
        let stdout = self.stdout.clone();
        self.stderr.wait_for(
            |l| l.starts_with("llmsim-agent: capturing "),
            TIMEOUT,
            move || format!("--- agent stdout ---\n{}", stdout.text()),
        );
    }

    /// Waits until `n` live lines were printed (`n` exchanges written).
    pub fn wait_live_lines(&self, n: usize) {
        let stdout = self.stdout.clone();
        self.stderr.wait_for_nth(n, is_live_line, TIMEOUT, move || {
            format!("--- agent stdout ---\n{}", stdout.text())
        });
    }

    /// Waits for the agent to exit by itself.
    pub fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let status = self.child.wait_timeout(TIMEOUT);
        let stdout = self.stdout.wait_closed(TIMEOUT);
        let stderr = self.stderr.wait_closed(TIMEOUT);
        let summary = split_summary(&stdout).map_or(Value::Null, |(_, _, summary)| summary);
        Finished {
            status,
            stdout,
            stderr,
            summary,
        }
    }

    /// Sends `signal` (`"INT"`, `"TERM"`) and waits for the agent to exit.
    pub fn stop(self, signal: &str) -> Finished {
        self.child.signal(signal);
        self.finish()
    }
}

/// The argument vector of a client in `tests/clients` run inside `netns`, as a `-- CMD`.
pub fn command_args(netns: &TestNetns, script: &str) -> Vec<OsString> {
    let mut args = vec![OsString::from("--")];
    args.extend(netns.exec_prefix());
    args.extend(client_argv(script));
    args
}

/// `openai_steps.py` running inside a network namespace, driven over stdin.
pub struct StepClient {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    pub stdout: Output,
    pub stderr: Output,
    /// The Python process's pid (from its `ready <pid>` line).
    pub pid: u32,
}

impl StepClient {
    /// Starts `cmd` (a command that ends up running `openai_steps.py`) and waits for `ready`.
    pub fn start(mut cmd: Command, ca: &TestCa) -> StepClient {
        configure_client_env(&mut cmd, ca);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd, "openai_steps.py");
        let stdin = child.child_mut().stdin.take();
        let stdout = Output::new(
            child.child_mut().stdout.take().expect("piped"),
            "openai_steps.py stdout",
        );
        let stderr = Output::new(
            child.child_mut().stderr.take().expect("piped"),
            "openai_steps.py stderr",
        );
        let errors = stderr.clone();
        let ready = stdout.wait_for(
            |l| l.starts_with("ready "),
            TIMEOUT,
            move || format!("--- client stderr ---\n{}", errors.text()),
        );
        let pid = ready["ready ".len()..]
            .parse()
            .unwrap_or_else(|e| panic!("bad ready line {ready:?}: {e}"));
        StepClient {
            child,
            stdin,
            stdout,
            stderr,
            pid,
        }
    }

    /// `openai_steps.py` in `netns`, run directly (not under the agent).
    pub fn in_netns(netns: &TestNetns, ca: &TestCa) -> StepClient {
        let argv = client_argv("openai_steps.py");
        let mut cmd = netns.command(&argv[0]);
        cmd.args(&argv[1..]);
        Self::start(cmd, ca)
    }

    /// Sends `plain` or `stream` and returns the step's JSON result.
    pub fn step(&mut self, command: &str) -> Value {
        let done = self
            .stdout
            .lines()
            .iter()
            .filter(|l| l.starts_with('{'))
            .count();
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{command}").expect("writing to openai_steps.py");
        stdin.flush().expect("flushing openai_steps.py stdin");
        let errors = self.stderr.clone();
        let line = self.stdout.wait_for_nth(
            done + 1,
            |l| l.starts_with('{'),
            TIMEOUT,
            move || format!("--- client stderr ---\n{}", errors.text()),
        );
        let result: Value = serde_json::from_str(&line).expect("step result is JSON");
        assert!(result.get("error").is_none(), "{result}");
        result
    }

    /// Closes stdin (the client exits) and waits for it.
    pub fn quit(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let status = self.child.wait_timeout(TIMEOUT);
        assert!(
            status.success(),
            "openai_steps.py failed: {status}\n{}",
            self.stderr.text()
        );
        status
    }
}

/// The exchange files of a snapshot (hidden temporary files aside), in name order, with their
/// parsed contents. Panics if any file does not parse.
pub fn exchange_files(dir: &Path) -> Vec<(PathBuf, Value)> {
    let exchanges = dir.join("exchanges");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&exchanges) {
        Ok(entries) => entries
            .map(|e| e.expect("dir entry").path())
            // Exchange files only: not the store's hidden temporary files.
            .filter(|path| {
                !path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", exchanges.display()),
    };
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not whole JSON: {e}\n{text}", path.display()));
            (path, value)
        })
        .collect()
}

/// Just the exchanges.
pub fn exchanges(dir: &Path) -> Vec<Value> {
    exchange_files(dir).into_iter().map(|(_, v)| v).collect()
}

/// The recorded exchanges as the snapshot model reads them.
pub fn models(recorded: &[Value]) -> Vec<Exchange> {
    recorded
        .iter()
        .map(|e| serde_json::from_value(e.clone()).expect("an exchange"))
        .collect()
}

/// Exchange `i`'s bodies equal, byte for byte, what the client reported it sent and
/// received (`result["sent"]`, `result["received"]`) and what the provider received and sent.
pub fn assert_bodies_as_exchanged(
    i: usize,
    exchange: &Value,
    result: &Value,
    served: &ProviderRequest,
) {
    let model: Exchange = serde_json::from_value(exchange.clone()).expect("an exchange");
    let sent = result["sent"].as_str().expect("sent");
    let received = result["received"].as_str().expect("received");
    assert_eq!(
        model.request.body.to_bytes(),
        sent.as_bytes(),
        "request {i}"
    );
    assert_eq!(
        model.response.body.to_bytes(),
        received.as_bytes(),
        "response {i}"
    );
    served.assert_recorded_as_sent(exchange);
}

/// No kernel event was dropped during the capture.
pub fn assert_no_events_dropped(finished: &Finished) {
    assert_eq!(
        figure(&finished.summary, "events_dropped_total"),
        0,
        "kernel events were dropped:\n{}",
        finished.dump()
    );
}

/// A figure of the summary, as u64.
pub fn figure(summary: &Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no number {key}: {summary:#}"))
}

/// Checks the `--json` summary against the snapshot directory `dir`, which held no exchange
/// before this capture: files and bytes written, incomplete count, and no drops.
pub fn assert_summary_matches_disk(finished: &Finished, dir: &Path) {
    let summary = &finished.summary;
    assert!(
        summary.is_object(),
        "no --json summary\n{}",
        finished.dump()
    );
    let files = exchange_files(dir);
    assert_eq!(
        figure(summary, "exchanges_written"),
        files.len() as u64,
        "exchanges_written\n{}",
        finished.dump()
    );
    let bytes: u64 = files
        .iter()
        .map(|(path, _)| std::fs::metadata(path).expect("stat").len())
        .sum();
    assert_eq!(figure(summary, "bytes_written"), bytes, "bytes_written");
    let incomplete = files
        .iter()
        .filter(|(_, exchange)| !exchange["incomplete"].is_null())
        .count() as u64;
    assert_eq!(
        figure(summary, "exchanges_incomplete"),
        incomplete,
        "exchanges_incomplete"
    );
    let per_reason: u64 = summary["events_dropped"]
        .as_object()
        .expect("events_dropped is an object")
        .values()
        .map(|v| v.as_u64().expect("a count"))
        .sum();
    assert_eq!(figure(summary, "events_dropped_total"), per_reason);
    assert_eq!(
        per_reason,
        0,
        "kernel events were dropped\n{}",
        finished.dump()
    );
    assert_eq!(figure(summary, "undecodable_records"), 0);
    assert_eq!(
        finished.live_lines().len() as u64,
        figure(summary, "exchanges_written"),
        "one live line per exchange written\n{}",
        finished.dump()
    );
    let listed = summary["files"].as_array().expect("files").len();
    assert_eq!(listed, files.len(), "files listed in the summary");
}

/// No key reached the snapshot in `dir`; the authorization header is there, redacted.
pub fn assert_keys_absent(dir: &Path) {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir.join("exchanges")).expect("exchanges dir") {
        text.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("read"));
    }
    for (_, key) in TEST_API_KEYS {
        assert!(!text.contains(key), "API key {key} reached the snapshot");
    }
    assert!(
        text.contains("Bearer <redacted:"),
        "authorization placeholder missing"
    );
}

/// Names of leftover temporary files (`.….tmp`) anywhere under `dir`.
/// Asserts that a recorded streamed response (an exchange file's JSON) is stored as at
/// least three SSE events ending in `[DONE]`, with ordered offsets spread over at least
/// 15 ms (the fake provider paces its events 20 ms apart).
pub fn assert_paced_sse(exchange: &Value) {
    let events = exchange["response"]["body"]["events"]
        .as_array()
        .expect("SSE events");
    assert!(events.len() >= 3, "too few events: {events:?}");
    assert_eq!(events.last().unwrap()["data"], "[DONE]");
    let offsets: Vec<f64> = events
        .iter()
        .map(|e| e["offset_ms"].as_f64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "offsets not ordered: {offsets:?}"
    );
    assert!(
        offsets.last().unwrap() - offsets[0] >= 15.0,
        "events were paced 20 ms apart: {offsets:?}"
    );
}

pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "tmp") {
                found.push(path);
            }
        }
    }
    found
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// Waits until `pid` is gone; panics after `timeout`.
pub fn wait_gone(pid: u32, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) still runs {timeout:?} later"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `check` returns something; panics after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The nonce the fake provider put in a client's answer text.
pub fn nonce_of(result: &Value) -> String {
    let text = result["text"].as_str().unwrap_or_default();
    llmsim_tests::find_nonce(text).unwrap_or_else(|| panic!("no nonce in {result}"))
}

/// The recorded exchange whose response carries `nonce`.
pub fn exchange_with_nonce<'a>(exchanges: &'a [Value], nonce: &str) -> &'a Value {
    exchanges
        .iter()
        .find(|e| e["response"]["body"].to_string().contains(nonce))
        .unwrap_or_else(|| {
            panic!(
                "no recorded response carries {nonce}; recorded {} exchanges",
                exchanges.len()
            )
        })
}

/// Checks one entry of a coverage report's `not_decrypted` list: its reason, the
/// `ClientHello`'s server name, the executable, and a peer the fake provider listens on.
pub fn assert_not_decrypted(
    entry: &Value,
    reason: &str,
    sni: &str,
    exe: &Path,
    provider: &FakeProvider,
) {
    assert_eq!(entry["reason"], reason, "{entry}");
    assert_eq!(entry["sni"], sni, "{entry}");
    assert_eq!(entry["exe"].as_str(), exe.to_str(), "{entry}");
    let peer: std::net::SocketAddr = entry["peer"]
        .as_str()
        .and_then(|peer| peer.parse().ok())
        .unwrap_or_else(|| panic!("peer is not an address: {entry}"));
    assert!(provider.addrs().contains(&peer), "{entry}");
}

/// The bytes of a client report's base64 field (clients print the exact bytes they moved).
pub fn b64(value: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("base64 text"))
        .expect("valid base64")
}

/// The bytes a stored body stands for.
pub fn body_bytes(body: &Value) -> Vec<u8> {
    serde_json::from_value::<llmsim_snapshot::model::Body>(body.clone())
        .unwrap_or_else(|e| panic!("stored body ({e}): {body}"))
        .to_bytes()
}
