//! A snapshot replayd cannot read: an exchange file cut short, one overwritten with bytes that
//! are not JSON, and one written by a newer format version. Each makes `replayd` refuse to
//! start, in every serving mode, with exit 2 and one line naming the file, before any app
//! runs or any port is bound. Unprivileged: the snapshot is loaded before anything else.

use std::{fs, path::Path, process::Command, time::Duration};

use llmsim_tests::{CommandOutput, replayd, run_command, snapshot::openai_models};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs replayd on `dir` with `mode` (its serving arguments) and returns what it printed.
fn replayd_on(dir: &Path, mode: &[&str]) -> CommandOutput {
    let mut cmd = Command::new(replayd());
    cmd.arg("--in").arg(dir).args(mode);
    run_command(cmd, "replayd on a damaged snapshot", TIMEOUT)
}

/// A one-exchange snapshot whose file is replaced by `damage` of its text; the directory
/// and the damaged file's path.
fn damaged(damage: impl FnOnce(&[u8]) -> Vec<u8>) -> (tempfile::TempDir, std::path::PathBuf) {
    let (snapshot, _) = openai_models();
    let exchanges = snapshot.path().join("exchanges");
    let mut files: Vec<_> = fs::read_dir(&exchanges)
        .expect("exchanges dir")
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files.remove(0);
    let text = fs::read(&file).expect("read the exchange");
    fs::write(&file, damage(&text)).expect("write the damaged exchange");
    (snapshot, file)
}

/// Every mode fails with exit 2 and exactly one line, which names `file` and contains
/// `why`; the command after `--` never runs.
fn assert_refused(dir: &Path, file: &Path, why: &str) {
    let marker = dir.join("the-app-ran");
    let marker_arg = marker.to_str().expect("UTF-8 path");
    let modes: [&[&str]; 2] = [&["--listen", "127.0.0.1:0"], &["--", "touch", marker_arg]];
    for mode in modes {
        let output = replayd_on(dir, mode);
        assert_eq!(output.status.code(), Some(2), "{mode:?}:\n{output}");
        let lines: Vec<&str> = output.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {mode:?}:\n{output}");
        assert!(
            lines[0].starts_with("replayd: ")
                && lines[0].contains(&file.display().to_string())
                && lines[0].contains(why),
            "{mode:?}: the line names {} and says {why:?}:\n{output}",
            file.display()
        );
        assert!(output.stdout.is_empty(), "{mode:?}:\n{output}");
        assert!(!marker.exists(), "{mode:?}: the app ran");
    }
}

#[test]
fn a_truncated_exchange_file_is_named_and_replayd_exits_2() {
    let (snapshot, file) = damaged(|text| text[..text.len() / 2].to_vec());
    assert_refused(snapshot.path(), &file, "EOF");
}

#[test]
fn an_exchange_file_of_garbage_is_named_and_replayd_exits_2() {
    let (snapshot, file) = damaged(|text| {
        let mut bytes = text.to_vec();
        bytes[0] = 0xff;
        bytes
    });
    assert_refused(snapshot.path(), &file, "expected value");
}

#[test]
fn an_empty_exchange_file_is_named_and_replayd_exits_2() {
    let (snapshot, file) = damaged(|_| Vec::new());
    assert_refused(snapshot.path(), &file, "EOF");
}

#[test]
fn an_exchange_from_a_newer_format_version_is_named_and_replayd_exits_2() {
    let (snapshot, file) = damaged(|text| {
        let text = std::str::from_utf8(text).expect("UTF-8 exchange");
        assert!(text.contains("\"format_version\": 1"), "{text}");
        text.replace("\"format_version\": 1", "\"format_version\": 2")
            .into_bytes()
    });
    assert_refused(
        snapshot.path(),
        &file,
        "has format_version 2, this build reads 1",
    );
}
