//! `replayd --cgroup PATH`, the daemon for an existing cgroup (a CI job's): an
//! app already running in the cgroup gets its answers from the recording, and
//! once replayd is killed with SIGKILL the kernel drops the redirect, so the
//! app's next request is not redirected and fails at once instead of hanging
//! or reaching anything else.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use llmsim_kernel::cgroup::Cgroup;
use llmsim_tests::{
    ChildGuard, Lines, TestNetns, client_argv,
    flows::{REPLAY_API_KEY, record_with_input},
    privileged, replayd,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// The system CAs plus replayd's, as `replayd trust install` would provide.
fn trust_bundle(ca_dir: &Path, out: &Path) -> PathBuf {
    let mut bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    bundle.extend(std::fs::read(ca_dir.join("ca-cert.pem")).expect("replayd wrote its CA"));
    let path = out.join("bundle.pem");
    std::fs::write(&path, bundle).expect("write bundle");
    path
}

#[test]
fn a_cgroup_is_served_until_replayd_is_killed_and_then_not_redirected() {
    if !privileged("replayd --cgroup") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let snapshot = work.path().join("llmsim");
    record_with_input("openai_steps.py", "plain\n", &snapshot);
    let cgroup = Cgroup::create("replay-daemon-test").expect("cgroup");
    let offline = TestNetns::offline();
    let ca_dir = work.path().join("ca");

    let mut daemon_cmd = offline.command(replayd());
    daemon_cmd
        .arg("--in")
        .arg(&snapshot)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .arg("--cgroup")
        // Relative to the cgroup2 mount, which `ip netns exec` puts elsewhere.
        .arg(cgroup.path().file_name().expect("cgroup name"))
        .stderr(Stdio::piped());
    let mut daemon = ChildGuard::spawn(&mut daemon_cmd, "replayd --cgroup");
    let mut daemon_err = Lines::new(daemon.child_mut().stderr.take().expect("stderr"), "replayd");
    daemon_err.wait_for(|l| l.contains("redirecting cgroup"), WAIT, String::new);

    let bundle = trust_bundle(&ca_dir, work.path());
    let argv = client_argv("openai_steps.py");
    // The shell joins the cgroup on the host, then execs into the namespace.
    let mut app_cmd = Command::new("sh");
    app_cmd
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            cgroup.path().display()
        ))
        .arg("sh")
        .args(offline.exec_prefix())
        .args(&argv)
        .env("SSL_CERT_FILE", &bundle)
        .env(REPLAY_API_KEY.0, REPLAY_API_KEY.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut app = ChildGuard::spawn(&mut app_cmd, "openai_steps.py in the cgroup");
    let mut stdin = app.child_mut().stdin.take().expect("stdin");
    let mut out = Lines::new(
        app.child_mut().stdout.take().expect("stdout"),
        "openai_steps.py",
    );
    let mut err = Lines::new(
        app.child_mut().stderr.take().expect("stderr"),
        "openai_steps.py stderr",
    );
    out.wait_for(|l| l.starts_with("ready"), WAIT, || err.seen().join("\n"));

    writeln!(stdin, "plain").expect("step");
    let answer: Value =
        serde_json::from_str(&out.wait_for(|l| l.starts_with('{'), WAIT, String::new))
            .expect("a JSON step result");
    assert!(
        answer["text"]
            .as_str()
            .is_some_and(|t| t.contains("nonce-")),
        "not a replayed answer: {answer}"
    );

    let status = Command::new("kill")
        .args(["-9", &daemon.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = daemon.wait_timeout(WAIT);

    // The next request is not redirected: with replayd gone, the name no
    // longer resolves in this namespace and the SDK fails at once.
    writeln!(stdin, "plain").expect("step");
    err.wait_for(
        |l| l.contains("APIConnectionError"),
        WAIT,
        || out.seen().join("\n"),
    );
    let status = app.wait_timeout(WAIT);
    assert!(
        !status.success(),
        "the app's request after SIGKILL did not fail"
    );
}
