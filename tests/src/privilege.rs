//! Root is opt-in: [`privileged`] decides whether a privileged test runs, skips with one clear
//! line for a normal user, or fails under `CI=true`, where a skip would hide a broken runner.

use std::io::Write as _;

/// The capabilities llmsim's privileged tests need, as printed in skip and failure messages.
const NEEDS: &str = "needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)";

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

/// Gate for a privileged test: `true` when running as root. Otherwise prints exactly one line,
/// `SKIP <feature>: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)`, to the real stderr (not
/// captured by the test runner, so it shows in `cargo test` output) and returns `false`; under
/// `CI=true` it panics instead, because a skip is a failure in CI.
pub fn privileged(feature: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        !in_ci(),
        "{feature}: {NEEDS}, and CI=true makes a skipped privileged test a failure"
    );
    let _ = writeln!(std::io::stderr(), "SKIP {feature}: {NEEDS}");
    false
}
