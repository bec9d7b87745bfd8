//! A capture killed with SIGKILL in the middle of a run leaves only whole exchange files, and
//! takes its command's whole process tree with it: the direct child through `PR_SET_PDEATHSIG`,
//! grandchildren through the cgroup watchdog, which also removes the run's cgroup. A later
//! capture into the same directory keeps what is there and removes stray temporary files.
//! Right after the kill there is no temporary file at all: the store publishes through unnamed
//! files (`O_TMPFILE`, then `linkat`), which vanish with the killed process.

mod capture_support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use capture_support::{Agent, TIMEOUT, exchange_files, poll, temp_files, wait_gone};
use llmsim_tests::{FakeProvider, TestCa, TestNetns, cgroup2_mount, client_script, privileged};

/// Every child of every thread of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    children
}

fn exchange_names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("exchanges")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn sigkill_mid_capture_leaves_whole_files_and_no_process_behind() {
    if !privileged("SIGKILL of a capture") {
        return;
    }
    kill_mid_capture(false);
}

#[test]
fn sigkill_mid_capture_leaves_no_temporary_file() {
    if !privileged("SIGKILL of a capture, strict") {
        return;
    }
    kill_mid_capture(true);
}

/// Kills a capture with SIGKILL while its client makes request after request, just after the
/// first exchange file appeared; `strict` also wants no temporary file right after the kill.
fn kill_mid_capture(strict: bool) {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");

    // The client is a grandchild: sh runs it and waits (`; true` keeps sh from exec'ing it).
    let mut args = vec![OsString::from("--")];
    args.extend(netns.exec_prefix());
    args.extend([
        "sh".into(),
        "-c".into(),
        r#"python3 "$0"; true"#.into(),
        client_script("openai_steps.py").into_os_string(),
    ]);
    let mut agent = Agent::spawn_with(out.path(), &ca, &args, |cmd| {
        cmd.stdin(Stdio::piped());
    });
    agent.wait_started();
    let ready = agent
        .stdout
        .wait_for(|l| l.starts_with("ready "), TIMEOUT, String::new);
    let client_pid: u32 = ready["ready ".len()..].parse().expect("client pid");
    let agent_pid = agent.child.id();
    let cgroup = cgroup2_mount().join(format!("llmsim-capture-{agent_pid}"));
    assert!(
        cgroup.is_dir(),
        "the run's cgroup {} exists",
        cgroup.display()
    );

    // Many requests, one after another, with a pause for each SSE stream.
    for i in 0..60 {
        agent.send_line(if i % 3 == 2 { "stream" } else { "plain" });
    }
    poll("the first exchange file", TIMEOUT, || {
        exchange_names(out.path())
            .iter()
            .any(|n| Path::new(n).extension().is_some_and(|e| e == "json"))
            .then_some(())
    });
    let children = children_of(agent_pid);
    assert!(!children.is_empty(), "the agent has children");
    agent.child.signal("KILL");
    let status = agent.child.wait_timeout(TIMEOUT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );

    // Nothing the capture started survives it.
    wait_gone(
        client_pid,
        "the client (a grandchild of the agent)",
        TIMEOUT,
    );
    for child in children {
        wait_gone(child, "a child of the agent", TIMEOUT);
    }
    poll("removal of the run's cgroup", TIMEOUT, || {
        (!cgroup.exists()).then_some(())
    });

    // Only whole files: every one parses (and, with `strict`, no temporary file is left).
    let files = exchange_files(out.path());
    assert_ne!(files.len(), 0, "the first exchange file is still there");
    for (path, exchange) in &files {
        assert!(
            exchange["format_version"].is_number(),
            "{} is not an exchange",
            path.display()
        );
    }
    let left = temp_files(out.path());
    if strict {
        assert_eq!(left, Vec::<PathBuf>::new(), "temporary files left");
    }
    for temp in &left {
        let name = temp
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            name.starts_with('.') && temp.extension().is_some_and(|e| e == "tmp"),
            "{} is neither an exchange nor a temporary file",
            temp.display()
        );
    }

    // A new capture into the same directory keeps them and appends after them.
    let before: Vec<_> = files
        .iter()
        .map(|(path, _)| (path.clone(), std::fs::read(path).expect("read")))
        .collect();
    let again = Agent::start(out.path(), &ca, &["--".into(), "true".into()]).finish();
    assert!(again.status.success(), "{}", again.dump());
    for (path, bytes) in &before {
        assert_eq!(&std::fs::read(path).expect("still there"), bytes);
    }
    assert_eq!(temp_files(out.path()), Vec::<PathBuf>::new());
}
