//! The snapshot directory made read-only while a capture runs (its filesystem remounted
//! read-only between two requests): the exchange written before stays whole, the next one
//! fails the capture with one line naming the directory and the cause, the exit status is
//! nonzero, and no partial or temporary file is left.

mod capture_support;

use std::{path::PathBuf, process::Stdio};

use capture_support::{Agent, TIMEOUT, command_args, exchange_files, temp_files};
use llmsim_tests::{FakeProvider, TestCa, TestNetns, TestTmpfs, privileged};

#[test]
fn a_snapshot_made_read_only_mid_run_fails_the_capture_in_one_line_and_keeps_what_was_written() {
    if !privileged("capture into a directory made read-only") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let tmpfs = TestTmpfs::mount("64m");
    let out = tmpfs.path().join("llmsim");
    let mut agent = Agent::spawn_with(&out, &ca, &command_args(&netns, "openai_steps.py"), |cmd| {
        cmd.stdin(Stdio::piped());
    });
    agent.wait_started();
    agent
        .stdout
        .wait_for(|l| l.starts_with("ready "), TIMEOUT, String::new);

    agent.send_line("plain");
    agent.wait_live_lines(1);
    let written = exchange_files(&out);
    assert_eq!(written.len(), 1);
    let (first, _) = &written[0];
    let first_bytes = std::fs::read(first).expect("read the first exchange");

    tmpfs.make_read_only();
    agent.send_line("plain");
    agent
        .stdout
        .wait_for(|l| l.contains("\"step\": 2"), TIMEOUT, String::new);
    agent.send_line("quit");
    let finished = agent.finish();
    assert_eq!(provider.requests().len(), 2, "{}", finished.dump());

    assert!(!finished.status.success(), "{}", finished.dump());
    finished.assert_one_write_error(&out, "Read-only file system");
    assert_eq!(finished.live_lines().len(), 1, "{}", finished.dump());

    let left: Vec<PathBuf> = std::fs::read_dir(out.join("exchanges"))
        .expect("exchanges dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(left, vec![first.clone()], "{}", finished.dump());
    assert_eq!(std::fs::read(first).expect("reread"), first_bytes);
    assert_eq!(temp_files(&out), Vec::<PathBuf>::new());
}
