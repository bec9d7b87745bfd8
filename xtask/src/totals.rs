//! The closing line of `cargo xtask test`, `N passed, N failed, N ignored, N skipped`: libtest's
//! `test result:` lines summed over every test binary, with each test that announced a skip
//! (`SKIP <feature>: <reason>` on stderr, see `llmsim_tests::privilege`) moved from passed, where
//! libtest counts it, to skipped.

use std::fmt;

use llmsim_tests::privilege::is_skip_line;

/// Counts gathered from the lines of a `cargo test` run, stdout and stderr alike.
#[derive(Debug, Default)]
pub struct Totals {
    /// Tests libtest reported as passed, skipped ones included.
    passed: u64,
    /// Tests libtest reported as failed.
    failed: u64,
    /// Tests libtest reported as ignored (`#[ignore]`).
    ignored: u64,
    /// Tests that announced a skip.
    skipped: u64,
}

impl Totals {
    /// Counts one output line: a `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line or
    /// a skip announcement; any other line counts nothing.
    pub fn add(&mut self, line: &str) {
        let line = line.trim_end();
        if is_skip_line(line) {
            self.skipped += 1;
            return;
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A skipped test returned early, so libtest counted it as passed. Saturating: a test
        // binary that died announces its skips but prints no `test result:` line.
        let passed = self.passed.saturating_sub(self.skipped);
        write!(
            f,
            "{passed} passed, {} failed, {} ignored, {} skipped",
            self.failed, self.ignored, self.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    fn totals(lines: &str) -> String {
        let mut totals = Totals::default();
        for line in lines.lines() {
            totals.add(line);
        }
        totals.to_string()
    }

    #[test]
    fn totals_add_up_test_result_lines() {
        assert_eq!(
            totals(
                "test result: ok. 46 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.53s\n\
                 test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
                 test foo ... ok\n"
            ),
            "49 passed, 1 failed, 2 ignored, 0 skipped"
        );
    }

    /// `tests/capture_hosts.rs` run as root: nothing skips, and stderr has no skip line.
    #[test]
    fn privileged_tests_run_as_root_count_as_passed() {
        let stdout = "
running 3 tests
test a_pattern_that_does_not_match_changes_nothing ... ok
test other_hosts_are_ignored_by_default ... ok
test host_patterns_and_any_host_record_other_hosts ... ok

test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 15.95s
";
        assert_eq!(totals(stdout), "3 passed, 0 failed, 0 ignored, 0 skipped");
    }

    /// `tests/capture_hosts.rs` run as uid 65534: libtest's stdout, then the test binary's stderr.
    #[test]
    fn skipped_privileged_tests_count_as_skipped_not_passed() {
        let stdout = "
running 3 tests
test host_patterns_and_any_host_record_other_hosts ... ok
test a_pattern_that_does_not_match_changes_nothing ... ok
test other_hosts_are_ignored_by_default ... ok

test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
";
        let stderr = "\
SKIP capture with --host and --any-host: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)
SKIP capture with a non-matching --host: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)
SKIP capture ignores other hosts: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)
";
        assert_eq!(
            totals(&format!("{stdout}{stderr}")),
            "0 passed, 0 failed, 0 ignored, 3 skipped"
        );
    }
}
