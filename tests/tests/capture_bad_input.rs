//! Bad input: each mistake a user can make before a capture starts is one line on stderr and exit
//! code 2, and nothing runs (the command is not started, no probe is attached). Bad traffic
//! during a capture (a TLS client that writes junk, one that speaks HTTP/2) is skipped with a
//! counted warning, and the capture goes on to record the next client whole.

mod capture_support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use capture_support::{Agent, TIMEOUT, assert_summary_matches_disk, exchanges, figure};
use llmsim_tests::{
    CommandOutput, FakeProvider, TestCa, TestNetns, client_script, llmsim_agent, privileged,
    run_command,
};

/// Runs `llmsim-agent capture ARGS` to completion.
fn capture(args: &[&std::ffi::OsStr], what: &str) -> CommandOutput {
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture").args(args);
    run_command(cmd, what, TIMEOUT)
}

/// Exit code 2 and exactly one line on stderr, which starts with `prefix`.
fn assert_one_line_exit_2(output: &CommandOutput, prefix: &str) {
    assert_eq!(output.status.code(), Some(2), "{output}");
    let stderr = output.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line\n{output}");
    assert!(
        stderr.starts_with(prefix),
        "expected a line starting with {prefix:?}\n{output}"
    );
    assert!(
        !stderr.contains("capturing"),
        "the capture must not have started\n{output}"
    );
    assert!(output.stdout.trim().is_empty(), "{output}");
}

/// `-- touch MARKER`: proves by MARKER's absence that the command never ran.
fn marker_command(marker: &Path) -> Vec<OsString> {
    vec!["--".into(), "touch".into(), marker.into()]
}

#[test]
fn a_file_where_the_snapshot_directory_should_be_is_refused() {
    if !privileged("capture into a file") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let marker = dir.path().join("ran");
    let mut args: Vec<OsString> = vec!["--out".into(), file.join("snapshot").into()];
    args.extend(marker_command(&marker));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    let output = capture(&args, "capture into a path under a file");
    assert_one_line_exit_2(&output, "llmsim-agent: snapshot directory ");
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn a_read_only_snapshot_directory_is_refused() {
    if !privileged("capture into a read-only directory") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let readonly = dir.path().join("ro");
    std::fs::create_dir(&readonly).expect("mkdir");
    let marker = dir.path().join("ran");
    // A read-only bind mount in a private mount namespace: even root cannot write there.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        r#"dir=$1; shift; mount --bind -o ro "$dir" "$dir" && exec "$@""#,
        "sh",
    ])
    .arg(&readonly)
    .arg(llmsim_agent())
    .arg("capture")
    .arg("--out")
    .arg(readonly.join("snapshot"))
    .args(marker_command(&marker));
    let output = run_command(cmd, "capture into a read-only bind mount", TIMEOUT);
    assert_one_line_exit_2(&output, "llmsim-agent: snapshot directory ");
    assert!(output.stderr.contains("Read-only file system"), "{output}");
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn a_capture_with_no_target_says_what_to_give() {
    if !privileged("capture without a target") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("snap");
    for args in [vec![], vec!["--"]] {
        let mut full: Vec<&std::ffi::OsStr> = vec!["--out".as_ref(), out.as_os_str()];
        full.extend(args.iter().map(std::ffi::OsStr::new));
        let output = capture(&full, "capture with no command");
        assert_one_line_exit_2(&output, "llmsim-agent: say what to capture");
    }
    assert!(!out.exists(), "no snapshot directory is created");
}

#[test]
fn a_command_that_does_not_exist_is_refused() {
    if !privileged("capture of a missing command") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("snap");
    let output = capture(
        &[
            "--out".as_ref(),
            out.as_os_str(),
            "--".as_ref(),
            "llmsim-no-such-program".as_ref(),
        ],
        "capture of a missing command",
    );
    assert_one_line_exit_2(
        &output,
        "llmsim-agent: command not found or not executable: llmsim-no-such-program",
    );
    assert!(!out.exists(), "no snapshot directory is created");
}

/// The running kernel's release and its (major, minor).
fn kernel_release() -> (String, (u32, u32)) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("/proc/sys/kernel/osrelease")
        .trim()
        .to_owned();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (release, version)
}

/// The kernel matrix runs this on every kernel: below 5.17 the agent must refuse in one line
/// naming the kernel before anything runs; from 5.17 on the same capture must run.
#[test]
fn a_kernel_older_than_5_17_is_refused_in_one_line() {
    if !privileged("capture on this kernel") {
        return;
    }
    let (release, version) = kernel_release();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let mut args: Vec<OsString> = vec!["--out".into(), dir.path().join("snap").into()];
    args.extend(marker_command(&marker));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    let output = capture(&args, "capture of touch");
    if version < (5, 17) {
        assert_one_line_exit_2(
            &output,
            &format!(
                "llmsim-agent: this kernel ({release}) is too old: llmsim-agent needs Linux 5.17 or newer"
            ),
        );
        assert!(!marker.exists(), "the command ran");
    } else {
        output.assert_success();
        assert!(marker.exists(), "the command did not run\n{output}");
        assert!(!output.stderr.contains("too old"), "{output}");
    }
}

#[test]
fn an_invalid_host_pattern_is_refused() {
    if !privileged("capture with an invalid --host") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("snap");
    let marker = dir.path().join("ran");
    let mut args: Vec<OsString> = vec![
        "--out".into(),
        out.clone().into(),
        "--host".into(),
        "api.[openai.com".into(),
    ];
    args.extend(marker_command(&marker));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    let output = capture(&args, "capture with an invalid --host pattern");
    assert_one_line_exit_2(
        &output,
        "llmsim-agent: invalid --host pattern `api.[openai.com`",
    );
    assert!(!marker.exists(), "the command ran");
    assert!(!out.exists(), "no snapshot directory is created");
}

#[test]
fn a_missing_or_cgroup_v1_directory_is_not_a_cgroup() {
    if !privileged("capture of a bad --cgroup") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("snap");
    let output = capture(
        &[
            "--out".as_ref(),
            out.as_os_str(),
            "--cgroup".as_ref(),
            "llmsim-no-such-cgroup".as_ref(),
        ],
        "capture of a missing cgroup",
    );
    assert_one_line_exit_2(&output, "llmsim-agent: cgroup ");
    // A cgroup v1 hierarchy has cgroup.procs too, but its processes never match a v2 id.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let v1 = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup").then(|| left.split_whitespace().nth(4))?
    });
    if let Some(v1) = v1 {
        let output = capture(
            &[
                "--out".as_ref(),
                out.as_os_str(),
                "--cgroup".as_ref(),
                v1.as_ref(),
            ],
            "capture of a cgroup v1 directory",
        );
        assert_one_line_exit_2(&output, "llmsim-agent: ");
        assert!(
            output.stderr.contains("is not a cgroup v2 directory"),
            "{output}"
        );
    }
    assert!(!out.exists(), "no snapshot directory is created");
}

#[test]
fn junk_and_http2_over_tls_are_counted_and_skipped() {
    if !privileged("capture of non-HTTP/1.1 TLS traffic") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");

    let mut args = vec![OsString::from("--")];
    args.extend(netns.exec_prefix());
    args.extend([
        "sh".into(),
        "-c".into(),
        r#"python3 "$0" garbage && python3 "$0" http2 && python3 "$1""#.into(),
        client_script("raw_tls.py").into_os_string(),
        client_script("openai_chat.py").into_os_string(),
    ]);
    let finished = Agent::start(out.path(), &ca, &args).finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());

    let connections = &finished.summary["connections"];
    assert_eq!(
        figure(connections, "non_http_connections"),
        2,
        "{}",
        finished.dump()
    );
    assert_eq!(
        figure(connections, "http2_connections"),
        1,
        "{}",
        finished.dump()
    );
    let warnings = finished
        .stderr
        .iter()
        .filter(|l| l.contains("skipping a TLS connection that is not HTTP/1.1"))
        .count();
    assert_eq!(
        warnings,
        2,
        "one warning per skipped connection\n{}",
        finished.dump()
    );
    assert!(
        finished
            .stderr
            .iter()
            .any(|l| l.contains("2 non-HTTP connections skipped")),
        "{}",
        finished.dump()
    );

    // The client after them is recorded whole.
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    assert!(recorded.iter().all(|e| e["incomplete"].is_null()));
    assert_eq!(
        provider.requests().len(),
        2,
        "the junk got no answer logged"
    );
    assert_summary_matches_disk(&finished, out.path());
}
