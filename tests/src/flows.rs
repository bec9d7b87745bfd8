//! Whole flows that several end-to-end tests share: recording a client into a
//! snapshot, and the command that replays a snapshot to a client in an offline
//! namespace.

use std::{path::Path, process::Command, time::Duration};

use crate::{
    ClientRun, CommandOutput, FakeProvider, TestCa, TestNetns, client_argv, configure_client_env,
    llmsim_agent, replayd, run_command,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The key replayed clients get: the SDKs refuse to start without one, and
/// replay needs no real one.
pub const REPLAY_API_KEY: (&str, &str) = ("OPENAI_API_KEY", "sk-replay-needs-no-key");

/// Records `client` into `out` with `llmsim-agent capture`, against a fake
/// provider in a fresh namespace; returns the answers the client reported.
pub fn record(client: &str, out: &Path) -> Vec<String> {
    let run = ClientRun::finish(record_with_input(client, "", out));
    run.texts().into_iter().map(str::to_owned).collect()
}

/// [`record`] for a client that reads `input` on standard input; returns what
/// the capture printed.
pub fn record_with_input(client: &str, input: &str, out: &Path) -> CommandOutput {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _provider = FakeProvider::start(&netns, &ca);
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture")
        .arg("--out")
        .arg(out)
        .arg("--")
        .args(netns.exec_prefix());
    // `printf` feeds the input; the client runs as the pipeline's last command.
    cmd.args(["sh", "-c", "printf %s \"$0\" | \"$@\"", input])
        .args(client_argv(client));
    configure_client_env(&mut cmd, &ca);
    let output = run_command(cmd, &format!("capture of {client}"), TIMEOUT);
    assert!(output.status.success(), "{output}");
    output
}

/// `replayd --in snapshot -- <client>` inside `offline`, with no CA settings
/// (replay provides its own) and a dummy key.
pub fn replay_command(offline: &TestNetns, snapshot: &Path, client: &str) -> Command {
    let mut cmd = offline.command(replayd());
    cmd.arg("--in")
        .arg(snapshot)
        .arg("--")
        .args(client_argv(client));
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
    ] {
        cmd.env_remove(name);
    }
    cmd.env(REPLAY_API_KEY.0, REPLAY_API_KEY.1)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}
