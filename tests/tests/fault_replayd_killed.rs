//! `replayd -- CMD` killed with SIGKILL in the middle of a streamed answer: the app (curl,
//! reading the stream) ends at once instead of hanging on a half-sent answer, it has the
//! events sent before the kill and none after, and replayd's cgroup, the one its redirect
//! hooks were attached to, is gone with every process in it, so no redirect outlives
//! replayd. (`replayd --cgroup` killed between requests is in `replay_daemon.rs`.)

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader, Read},
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use llmsim_tests::{
    ChildGuard, TestNetns, cgroup2_mount, flows::replayd_command, privileged, snapshot,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// How long the app and replayd's cgroup may outlive replayd: "at once", with room for a
/// loaded machine.
const AT_ONCE: Duration = Duration::from_secs(10);
const CHAT_URL: &str = "https://api.openai.com/v1/chat/completions";

/// Reads `reader` line by line on a thread; `None` marks its end.
fn line_channel(reader: impl Read + Send + 'static) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// The `i`th chunk of the recorded stream.
fn chunk(i: usize) -> String {
    json!({"id": "chatcmpl-k", "object": "chat.completion.chunk", "created": 1,
           "model": "gpt-4o-mini",
           "choices": [{"index": 0, "delta": {"content": format!("w{i} ")},
                        "finish_reason": null}]})
    .to_string()
}

/// A snapshot answering `request` with a stream of two events at once, then two a minute
/// later: a kill falls between them.
fn slow_stream_snapshot(request: &Value) -> tempfile::TempDir {
    let events = json!([
        {"offset_ms": 0.0, "data": chunk(0)},
        {"offset_ms": 0.0, "data": chunk(1)},
        {"offset_ms": 60000.0, "data": chunk(2)},
        {"offset_ms": 60000.0, "data": "[DONE]"},
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    snapshot::write_exchanges(
        dir.path(),
        [json!({
            "provider": "openai", "host": "api.openai.com", "scheme": "https",
            "model": "gpt-4o-mini", "streamed": true,
            "request": {"method": "POST", "path": "/v1/chat/completions",
                        "headers": [["content-type", "application/json"]],
                        "body": {"kind": "json", "json": request}},
            "response": {"status": 200, "headers": [["content-type", "text/event-stream"]],
                         "body": {"kind": "sse", "events": events}}
        })],
    );
    dir
}

#[test]
fn replayd_killed_mid_stream_ends_the_app_at_once_and_leaves_no_redirect() {
    if !privileged("SIGKILL of replayd mid-stream") {
        return;
    }
    let request = json!({"model": "gpt-4o-mini", "stream": true,
                         "messages": [{"role": "user", "content": "killed mid-stream"}]});
    let dir = slow_stream_snapshot(&request);

    let offline = TestNetns::offline();
    let argv: Vec<OsString> = [
        "curl",
        "--silent",
        "--show-error",
        "-N",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &request.to_string(),
        CHAT_URL,
    ]
    .map(OsString::from)
    .to_vec();
    let mut cmd = replayd_command(&offline, dir.path(), argv);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut replayd = ChildGuard::spawn(&mut cmd, "replayd -- curl");
    // curl inherits both pipes: they end when replayd and everything it started have.
    let stdout = line_channel(replayd.child_mut().stdout.take().expect("stdout"));
    let stderr = line_channel(replayd.child_mut().stderr.take().expect("stderr"));
    let stderr_text = || stderr.try_iter().flatten().collect::<Vec<_>>().join("\n");

    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.iter().any(|l: &String| l.contains("w1 ")) {
        match stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(line)) => seen.push(line),
            other => panic!(
                "the first events never reached curl ({other:?}); stdout:\n{}\nstderr:\n{}",
                seen.join("\n"),
                stderr_text()
            ),
        }
    }
    let cgroup = cgroup2_mount().join(format!("llmsim-replay-{}", replayd.id()));
    assert!(
        cgroup.join("cgroup.procs").exists(),
        "replayd's cgroup {} is not where expected",
        cgroup.display()
    );

    replayd.signal("KILL");
    let killed = Instant::now();
    let status = replayd.wait_timeout(WAIT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );

    // Every writer of the pipe (curl) has ended.
    loop {
        match stdout.recv_timeout(AT_ONCE.saturating_sub(killed.elapsed())) {
            Ok(Some(line)) => seen.push(line),
            Ok(None) => break,
            Err(e) => panic!(
                "the app still runs {AT_ONCE:?} after replayd was killed ({e}); stdout:\n{}\n\
                 stderr:\n{}",
                seen.join("\n"),
                stderr_text()
            ),
        }
    }
    let data: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(
        data,
        [chunk(0), chunk(1)],
        "curl got exactly the events sent before the kill:\n{}",
        seen.join("\n")
    );

    while cgroup.exists() && killed.elapsed() < AT_ONCE {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !cgroup.exists(),
        "replayd's cgroup {} (and the redirect attached to it) outlived replayd by {AT_ONCE:?}",
        cgroup.display()
    );
}
