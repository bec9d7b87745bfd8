//! Child processes for tests: a kill-on-drop guard, a line reader that waits for a readiness
//! line with a deadline (instead of sleeping), and a runner that collects a command's output with
//! a timeout and formats everything a failing assertion needs to show. Every deadline here is
//! [`patient`]: longer in an emulated guest of the kernel matrix.

use std::fmt;
use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::kernels::in_kernel_vm;

/// How many times longer a deadline is in a guest of the kernel matrix, where QEMU may emulate
/// the CPU (TCG) and Python or Node take tens of seconds to start.
const GUEST_PATIENCE: u32 = 5;

/// `timeout`, or [`GUEST_PATIENCE`] times it in a guest of the kernel matrix. Only deadlines
/// (how long a test waits before it fails) are stretched, never what a test measures.
pub fn patient(timeout: Duration) -> Duration {
    static IN_GUEST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *IN_GUEST.get_or_init(in_kernel_vm) {
        timeout * GUEST_PATIENCE
    } else {
        timeout
    }
}

/// A child process that is killed (SIGKILL) and reaped when the guard drops.
pub struct ChildGuard {
    /// Always `Some` until [`ChildGuard::wait_timeout`] moves it to a waiter thread.
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    /// Spawns `cmd`; `what` names it in panic messages.
    pub fn spawn(cmd: &mut Command, what: &str) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        ChildGuard {
            child: Some(child),
            what: what.to_owned(),
        }
    }

    fn child(&self) -> &Child {
        self.child
            .as_ref()
            .expect("the child is present until wait_timeout")
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child().id()
    }

    /// The child itself, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is present until wait_timeout")
    }

    /// Sends a signal by name (`"TERM"`, `"INT"`, ...) with kill(1); the pid cannot have been
    /// reused because the guard has not reaped the child yet.
    pub fn signal(&self, signal: &str) {
        let pid = self.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{signal} for {}: {e}", self.what));
        assert!(
            status.success(),
            "kill -{signal} {pid} ({}) failed: {status}",
            self.what
        );
    }

    /// Whether the child has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let what = self.what.clone();
        self.child_mut()
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot poll {what}: {e}"))
    }

    /// Waits for the child to exit (e.g. after [`ChildGuard::signal`]) within `timeout`;
    /// kills it and panics if it does not.
    pub fn wait_timeout(mut self, timeout: Duration) -> ExitStatus {
        let timeout = patient(timeout);
        let mut child = self
            .child
            .take()
            .expect("the child is present until wait_timeout");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            status
        });
        if rx.recv_timeout(timeout).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = waiter.join();
            panic!(
                "{} (pid {pid}) did not exit within {timeout:?}; killed it",
                self.what
            );
        }
        waiter
            .join()
            .expect("waiter thread panicked")
            .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.what))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Lines of a child's output, read by a background thread so that waiting has a deadline.
pub struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    what: String,
}

impl Lines {
    /// Starts reading `reader` (a `ChildStdout` or `ChildStderr`) line by line.
    pub fn new(reader: impl Read + Send + 'static, what: &str) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
            what: what.to_owned(),
        }
    }

    /// Returns the first line for which `pred` holds, reading up to `timeout`. Panics, listing
    /// the lines seen, if the stream ends or the deadline passes first; `context` is called
    /// then to add more detail (e.g. the child's stderr).
    pub fn wait_for(
        &mut self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
        context: impl FnOnce() -> String,
    ) -> String {
        let timeout = patient(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => format!("nothing matched within {timeout:?}"),
                        RecvTimeoutError::Disconnected => {
                            "output ended (the process exited?)".to_owned()
                        }
                    };
                    panic!(
                        "waiting for a line from {}: {why}\nlines seen:\n{}\n{}",
                        self.what,
                        self.seen.join("\n"),
                        context()
                    );
                }
            }
        }
    }

    /// Every line read so far (including those consumed by [`Lines::wait_for`]).
    pub fn seen(&mut self) -> &[String] {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// What a finished command printed, with a description for assertion messages.
pub struct CommandOutput {
    /// What ran: the description given and the command line.
    pub what: String,
    /// The exit status (a kill by the timeout shows as a signal).
    pub status: ExitStatus,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
    /// Whether the timeout killed it.
    pub timed_out: bool,
}

impl CommandOutput {
    /// Panics with the full output unless the command exited with status 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success() && !self.timed_out, "{self}");
        self
    }

    /// Parses stdout as one JSON value, panicking with the full output if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e})\n{self}"))
    }
}

impl fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let timed_out = if self.timed_out {
            " (killed by the timeout)"
        } else {
            ""
        };
        writeln!(f, "{} exited with {}{timed_out}", self.what, self.status)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

/// Runs `cmd` to completion with stdin closed, collecting stdout and stderr; kills it (SIGKILL)
/// after `timeout`. Does not check the exit status: see [`CommandOutput::assert_success`].
pub fn run_command(mut cmd: Command, what: &str, timeout: Duration) -> CommandOutput {
    let what = format!("{what} ({cmd:?})");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let (tx, rx) = mpsc::channel();
    let stdout = collect(child.stdout.take().expect("stdout is piped"), tx.clone());
    let stderr = collect(child.stderr.take().expect("stderr is piped"), tx);

    // Both pipes reaching end of file means the child (and anything it left holding them) exited.
    let deadline = Instant::now() + patient(timeout);
    let mut timed_out = false;
    for _ in 0..2 {
        if rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("cannot wait for {what}: {e}"));
    if timed_out {
        // Give the readers a moment to drain what the killed child wrote; descendants may still
        // hold the pipes open, so do not wait for end of file.
        let _ = rx.recv_timeout(Duration::from_millis(500));
    }
    let text = |buf: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(
            &buf.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    };
    CommandOutput {
        what,
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
        timed_out,
    }
}

fn collect(mut reader: impl Read + Send + 'static, done: mpsc::Sender<()>) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(&chunk[..n]),
            }
        }
        let _ = done.send(());
    });
    buf
}
