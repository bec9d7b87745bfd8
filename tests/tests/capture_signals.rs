//! Exit codes and signals in command mode: the capture exits with the command's exit code; a
//! SIGTERM (or SIGINT) to the capture is passed on to the command, whose own exit code is then
//! reported, and whatever the command left running in its cgroup is killed at the end.

mod capture_support;

use std::ffi::OsString;

use capture_support::{Agent, TIMEOUT, assert_summary_matches_disk, wait_gone};
use llmsim_tests::{TestCa, privileged};

#[test]
fn the_capture_exits_with_the_commands_exit_code() {
    if !privileged("capture exit code") {
        return;
    }
    let ca = TestCa::new();
    let out = tempfile::tempdir().expect("tempdir");
    let args: Vec<OsString> = vec!["--".into(), "sh".into(), "-c".into(), "exit 3".into()];
    let finished = Agent::start(out.path(), &ca, &args).finish();
    assert_eq!(finished.status.code(), Some(3), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 3);
    assert_summary_matches_disk(&finished, out.path());
}

#[test]
fn sigterm_is_passed_on_to_the_command_and_its_leftovers_are_killed() {
    if !privileged("capture SIGTERM forwarding") {
        return;
    }
    let ca = TestCa::new();
    let out = tempfile::tempdir().expect("tempdir");
    // The shell leaves a background process behind and exits 7 on SIGTERM.
    let script = r#"trap 'echo got-term; exit 7' TERM; sleep 1000 & echo "ready $!"; wait"#;
    let args: Vec<OsString> = vec!["--".into(), "sh".into(), "-c".into(), script.into()];
    let agent = Agent::start(out.path(), &ca, &args);
    let ready = agent
        .stdout
        .wait_for(|l| l.starts_with("ready "), TIMEOUT, String::new);
    let leftover: u32 = ready["ready ".len()..].parse().expect("pid");
    let finished = agent.stop("TERM");
    assert!(
        finished.stdout.iter().any(|l| l == "got-term"),
        "the command got SIGTERM\n{}",
        finished.dump()
    );
    assert_eq!(finished.status.code(), Some(7), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 7);
    wait_gone(leftover, "a process the command left behind", TIMEOUT);
    assert_summary_matches_disk(&finished, out.path());
}
