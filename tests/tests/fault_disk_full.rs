//! Disk full during capture: the snapshot directory is a 1 MiB tmpfs and the client sends a
//! prompt of more than 4 MiB. The agent says so in one line naming the directory and the
//! cause, exits nonzero, and leaves no exchange file and no temporary file: nothing partial.

mod capture_support;

use std::path::PathBuf;

use capture_support::{Agent, command_args, temp_files};
use llmsim_tests::{FakeProvider, TestCa, TestNetns, TestTmpfs, privileged};

#[test]
fn a_full_disk_fails_the_capture_in_one_line_and_leaves_no_partial_file() {
    if !privileged("capture onto a full tmpfs") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let tmpfs = TestTmpfs::mount("1m");
    let out = tmpfs.path().join("llmsim");

    let agent = Agent::start(&out, &ca, &command_args(&netns, "openai_long_prompt.py"));
    let finished = agent.finish();
    assert_eq!(provider.requests().len(), 1, "{}", finished.dump());

    assert!(!finished.status.success(), "{}", finished.dump());
    finished.assert_one_write_error(&out, "No space left on device");
    assert!(finished.live_lines().is_empty(), "{}", finished.dump());

    let left: Vec<PathBuf> = std::fs::read_dir(out.join("exchanges"))
        .expect("exchanges dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "{}", finished.dump());
    assert_eq!(temp_files(&out), Vec::<PathBuf>::new());
}
