//! A client that refuses the replay CA is named, not left to hang: an app that trusts only
//! roots of its own (`tests/clients/pinned_roots.py`, an `SSLContext` loaded with the test
//! CA alone) connects to api.openai.com under `replayd -- CMD`; the handshake fails with
//! the client's `unknown_ca` alert, and replayd's end report names the client's pid, its
//! command and the SNI with "the client's TLS stack does not read the system trust store",
//! and the run exits nonzero even though the app's own exit code is handled.

use std::time::Duration;

use llmsim_tests::{
    TestCa, TestNetns, client_argv, flows::replayd_command, privileged, run_command,
};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_client_with_its_own_roots_is_named_in_the_report_and_fails_the_run() {
    if !privileged("replay of a client that rejects the replay CA") {
        return;
    }
    let ca = TestCa::new();
    let snapshot = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let offline = TestNetns::offline();
    // `sh -c 'python3 …; exit 0'`: the app's refusal alone would fail the run; the report
    // must fail it on its own.
    let mut argv = vec!["sh".into(), "-c".into(), "\"$0\" \"$1\"; exit 0".into()];
    argv.extend(client_argv("pinned_roots.py"));
    let mut cmd = replayd_command(&offline, snapshot.path(), argv);
    cmd.env("XDG_DATA_HOME", data.path())
        .env("PINNED_CA_FILE", ca.ca_cert_path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(cmd, "replayd -- pinned_roots.py", TIMEOUT);
    assert!(!output.timed_out, "the run hung:\n{output}");
    assert!(
        output.stdout.contains("rejected: "),
        "the app refused the certificate:\n{output}"
    );
    assert_eq!(output.status.code(), Some(1), "the run fails:\n{output}");
    let line = output
        .stderr
        .lines()
        .find(|line| line.contains("rejected the replay CA"))
        .unwrap_or_else(|| panic!("no rejected-CA line in the report:\n{output}"));
    assert!(
        line.starts_with("replayd: pid ")
            && line.contains(
                " (python3) rejected the replay CA for api.openai.com (alert UnknownCA): "
            )
            && line.ends_with("the client's TLS stack does not read the system trust store"),
        "{line}"
    );
    let pid: u32 = line["replayd: pid ".len()..]
        .split(' ')
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"));
    assert!(pid > 1, "{line}");
}
