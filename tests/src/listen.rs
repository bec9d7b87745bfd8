//! `replayd --listen` as the tests run it: on an ephemeral loopback port with a CA
//! directory of its own, its addresses read from what it prints, stopped with SIGTERM for
//! its end report.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ChildGuard, Lines, replayd};

/// How long replayd may take to start listening or to write its report.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A running `replayd --listen 127.0.0.1:0` and its stderr.
pub struct ListeningReplayd {
    child: ChildGuard,
    stderr: Lines,
    _ca_dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its metrics are served, with `--metrics`.
    pub metrics: Option<SocketAddr>,
}

impl ListeningReplayd {
    /// Starts `replayd --listen 127.0.0.1:0 --in SNAPSHOT` with `args`.
    pub fn start(snapshot: &Path, args: &[&str]) -> Self {
        let ca_dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(replayd());
        cmd.args(["--listen", "127.0.0.1:0", "--in"])
            .arg(snapshot)
            .arg("--ca-dir")
            .arg(ca_dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd, "replayd --listen");
        let stderr = child.child_mut().stderr.take().expect("stderr is piped");
        let mut stderr = Lines::new(stderr, "replayd --listen");
        let line = stderr.wait_for(
            |l| l.starts_with("replayd: listening on "),
            TIMEOUT,
            String::new,
        );
        let addr = line
            .trim_start_matches("replayd: listening on ")
            .parse()
            .expect("the listening address");
        let metrics = stderr
            .seen()
            .iter()
            .find_map(|l| l.strip_prefix("replayd: metrics on http://"))
            .map(|rest| {
                rest.trim_end_matches("/metrics")
                    .parse()
                    .expect("the metrics address")
            });
        ListeningReplayd {
            child,
            stderr,
            _ca_dir: ca_dir,
            addr,
            metrics,
        }
    }

    /// The base URL of the listener.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops replayd with SIGTERM; returns its exit code and its report lines.
    pub fn stop(mut self) -> (Option<i32>, Vec<String>) {
        self.child.signal("TERM");
        self.stderr.wait_for(
            |l| l.starts_with("replayd: wall time saved"),
            TIMEOUT,
            String::new,
        );
        let status = self.child.wait_timeout(TIMEOUT);
        let lines = self.stderr.seen().to_vec();
        (status.code(), lines)
    }
}
