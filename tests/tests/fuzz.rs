//! The fuzz targets' short pass, as CI runs it: `cargo xtask fuzz --time 0` builds every
//! target under fuzz/, seeds it from the recorded traffic and runs each input of its corpus
//! once, with no new inputs, so that the pass is the same on every run;
//! none may crash, and the table has a row for every target, each with executions.

use std::process::Command;
use std::time::Duration;

use llmsim_tests::{binary, on_path, repo_root, requires, run_command};

/// The cold build of the targets dominates: a few minutes on an idle machine.
const TIMEOUT: Duration = Duration::from_mins(30);

/// The targets fuzz/Cargo.toml declares (`[[bin]]` names).
fn declared_targets() -> Vec<String> {
    let manifest = std::fs::read_to_string(repo_root().join("fuzz/Cargo.toml"))
        .unwrap_or_else(|e| panic!("reading fuzz/Cargo.toml: {e}"));
    let mut targets = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(name) = line.strip_prefix("name = ") {
            targets.push(name.trim_matches('"').to_owned());
        }
    }
    targets
}

#[test]
fn every_fuzz_target_runs_its_seeds_without_a_crash() {
    if !requires(
        on_path("cargo-fuzz") && on_path("rustup"),
        "fuzz",
        "needs cargo-fuzz and rustup (scripts/setup.sh installs them)",
    ) {
        return;
    }
    let mut fuzz = Command::new(binary("xtask"));
    fuzz.args(["fuzz", "--time", "0"]).current_dir(repo_root());
    let output = run_command(fuzz, "cargo xtask fuzz --time 0", TIMEOUT);
    output.assert_success();
    eprint!("{}", output.stdout);
    let targets = declared_targets();
    assert!(targets.len() >= 10, "fuzz/Cargo.toml declares {targets:?}");
    for target in &targets {
        let row: Vec<&str> = output
            .stdout
            .lines()
            .map(str::split_whitespace)
            .find_map(|mut words| (words.next() == Some(target)).then(|| words.collect()))
            .unwrap_or_else(|| panic!("no row for {target}\n{output}"));
        // executions, exec/s, cov, ft, corpus, crashes
        assert_eq!(row.len(), 6, "row for {target}: {row:?}\n{output}");
        let executions: u64 = row[0]
            .parse()
            .unwrap_or_else(|_| panic!("{target} reports no executions\n{output}"));
        assert!(executions > 0, "{target} ran nothing\n{output}");
        assert_eq!(row[5], "0", "{target} crashed\n{output}");
    }
}
