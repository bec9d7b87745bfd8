//! Root is opt-in: [`privileged`] decides whether a privileged test runs, skips with one clear
//! line for a normal user, or fails under `CI=true`, where a skip would hide a broken runner;
//! [`requires`] does the same for anything else a test needs from the machine.
//! It also owns the form of that line, which [`is_skip_line`] recognises so that a test run's
//! totals can count a skipped test as skipped rather than passed.

use std::io::Write as _;

/// The capabilities llmsim's privileged tests need, as printed in skip and failure messages.
const NEEDS: &str = "needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)";

/// How the line announcing a skipped test starts: `SKIP <feature>: <reason>`.
const SKIP_PREFIX: &str = "SKIP ";

/// Whether one line of a test run's stderr announces a skipped test, `SKIP <feature>: <reason>`.
/// libtest reports a skipped test as passed; whoever sums a run's results subtracts these.
pub fn is_skip_line(line: &str) -> bool {
    line.strip_prefix(SKIP_PREFIX)
        .and_then(|rest| rest.split_once(": "))
        .is_some_and(|(feature, reason)| !feature.is_empty() && !reason.is_empty())
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|e| panic!("cannot read /proc/self/status to find the effective uid: {e}"));
    let uids = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .unwrap_or_else(|| panic!("no Uid: line in /proc/self/status:\n{status}"));
    // Real, effective, saved, filesystem.
    uids.split_whitespace().nth(1) == Some("0")
}

/// Whether env `CI` says this is a CI run (`CI=true`, as GitHub Actions and most CI systems set).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Gate for a privileged test: `true` when running as root, otherwise as [`requires`] says,
/// with the reason `needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)`.
pub fn privileged(feature: &str) -> bool {
    requires(is_root(), feature, NEEDS)
}

/// Gate for a test that needs something the machine may lack (root, a browser): `true` when
/// `available`. Otherwise prints exactly one line, `SKIP <feature>: <reason>`, to the real
/// stderr (not captured by the test runner, so it shows in `cargo test` output) in a single
/// write, so that output of other processes sharing that stderr cannot split it, and returns
/// `false`; under `CI=true` it panics instead, because a skip is a failure in CI.
pub fn requires(available: bool, feature: &str, reason: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !in_ci(),
        "{feature}: {reason}, and CI=true makes a skipped test a failure"
    );
    let line = format!("{SKIP_PREFIX}{feature}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

#[cfg(test)]
mod tests {
    use super::{NEEDS, SKIP_PREFIX, is_skip_line};

    #[test]
    fn the_skip_line_is_recognised() {
        assert!(is_skip_line(&format!(
            "{SKIP_PREFIX}capture --pid: {NEEDS}"
        )));
        assert!(!is_skip_line("SKIP"));
        assert!(!is_skip_line("SKIP : no feature"));
        assert!(!is_skip_line("SKIPPED capture --pid: later"));
        assert!(!is_skip_line(
            "warning: SKIP capture --pid: not at the start"
        ));
    }
}
