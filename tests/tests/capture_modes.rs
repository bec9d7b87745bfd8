//! The capture targets other than `-- CMD`: `--pid` (attach to a client that is already running;
//! the capture ends by itself when it exits), `--cgroup` (every process of a cgroup v2 the test
//! creates and of its child cgroups, and nothing outside it) and `--all` (every process on the host, until SIGTERM);
//! `--pid`, `--cgroup` and `-- CMD` also keep their breakpoints out of every other process.
//! Each client is `openai_steps.py`, which waits on stdin, so the capture is attached before it
//! makes its first request.

mod capture_support;

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use capture_support::{
    Agent, StepClient, TIMEOUT, assert_summary_matches_disk, exchange_with_nonce, exchanges,
    is_live_line, nonce_of,
};
use llmsim_tests::{
    ChildGuard, ClientRun, FakeProvider, TestCa, TestCgroup, TestNetns, client_argv,
    configure_client_env, privileged, run_client, run_command,
};
use serde_json::Value;

/// Held shared by the tests whose captures may plant breakpoints in every process that maps
/// libssl (`--all`; `--cgroup` did once), and exclusively by the tests that check a capture keeps
/// them out of a bystander process: any of those captures, running beside it, would plant one
/// there.
static BREAKPOINTS_EVERYWHERE: RwLock<()> = RwLock::new(());

fn breakpoints_everywhere() -> RwLockReadGuard<'static, ()> {
    BREAKPOINTS_EVERYWHERE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The client's two steps were recorded, by its process, with the nonces it saw.
fn assert_steps_recorded(recorded: &[Value], pid: u32, plain: &Value, streamed: &Value) {
    for (result, stream) in [(plain, false), (streamed, true)] {
        let nonce = nonce_of(result);
        let exchange = exchange_with_nonce(recorded, &nonce);
        assert_eq!(exchange["process"]["pid"], pid, "{exchange:#}");
        assert_eq!(exchange["process"]["comm"], "python3", "{exchange:#}");
        assert_eq!(exchange["host"], "api.openai.com");
        assert_eq!(exchange["request"]["path"], "/v1/chat/completions");
        assert_eq!(exchange["response"]["status"], 200);
        assert_eq!(exchange["streamed"], stream);
        assert!(exchange["incomplete"].is_null(), "{exchange:#}");
    }
}

fn steps_argv() -> Vec<OsString> {
    client_argv("openai_steps.py")
}

fn in_netns(netns: &TestNetns, argv: &[OsString]) -> Vec<OsString> {
    let mut full = netns.exec_prefix();
    full.extend_from_slice(argv);
    full
}

#[test]
fn pid_mode_attaches_to_a_running_client_and_ends_when_it_exits() {
    if !privileged("capture --pid") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");

    let mut client = StepClient::in_netns(&netns, &ca);
    let pid = client.pid;
    let agent = Agent::start(out.path(), &ca, &["--pid".into(), pid.to_string().into()]);
    let plain = client.step("plain");
    let streamed = client.step("stream");
    // Both are written while the client still runs: the SDK stops reading at
    // `data: [DONE]` and frees the connection, which ends the stream.
    agent.wait_live_lines(2);
    client.quit();
    // No signal: the capture notices the exit and ends by itself.
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert!(finished.summary["exit_code"].is_null());
    assert!(
        finished
            .stderr
            .iter()
            .any(|l| l.starts_with(&format!("llmsim-agent: capturing pid {pid} "))),
        "{}",
        finished.dump()
    );

    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    assert_steps_recorded(&recorded, pid, &plain, &streamed);
    assert_summary_matches_disk(&finished, out.path());
}

#[test]
fn cgroup_mode_records_its_processes_only() {
    if !privileged("capture --cgroup") {
        return;
    }
    let _everywhere = breakpoints_everywhere();
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let cgroup = TestCgroup::new();

    let mut client = StepClient::start(cgroup.command(&in_netns(&netns, &steps_argv())), &ca);
    let agent = Agent::start(
        out.path(),
        &ca,
        &["--cgroup".into(), cgroup.relative().into()],
    );
    let plain = client.step("plain");
    // A client outside the cgroup, at the same time: not recorded.
    let outsider = run_client(&netns, &ca, "openai_chat.py");
    // A client in a child cgroup, as a CI job step or a systemd scope: recorded.
    let child = cgroup.child("step");
    let mut nested = child.command(&in_netns(&netns, &client_argv("openai_chat.py")));
    configure_client_env(&mut nested, &ca);
    let nested = ClientRun::finish(run_command(nested, "client in a child cgroup", TIMEOUT));
    let streamed = client.step("stream");
    let pid = client.pid;
    client.quit();
    // The streamed exchange ends with its connection, when the process exits.
    let expected = 2 + nested.report.results.len();
    agent.wait_live_lines(expected);
    let finished = agent.stop("INT");
    assert!(finished.status.success(), "{}", finished.dump());

    let recorded = exchanges(out.path());
    assert_eq!(
        recorded.len(),
        expected,
        "the cgroup's exchanges, its child cgroup's included\n{}",
        finished.dump()
    );
    let (steps, in_child): (Vec<Value>, Vec<Value>) = recorded
        .iter()
        .cloned()
        .partition(|e| e["process"]["pid"] == pid);
    assert_steps_recorded(&steps, pid, &plain, &streamed);
    for result in &nested.report.results {
        let nonce = result.nonce().expect("nonce");
        exchange_with_nonce(&in_child, &nonce);
    }
    for result in &outsider.report.results {
        let nonce = result.nonce().expect("nonce");
        assert!(
            !recorded.iter().any(|e| e.to_string().contains(&nonce)),
            "a process outside the cgroup was recorded"
        );
    }
    assert_eq!(
        provider.requests().len(),
        expected + outsider.report.results.len(),
        "every request was served"
    );
    assert_summary_matches_disk(&finished, out.path());
}

#[test]
fn all_mode_records_every_process_until_sigterm() {
    if !privileged("capture --all") {
        return;
    }
    let _everywhere = breakpoints_everywhere();
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");

    let agent = Agent::start(out.path(), &ca, &["--all".into()]);
    // Started after the capture: found through its exec.
    let mut client = StepClient::in_netns(&netns, &ca);
    let pid = client.pid;
    let plain = client.step("plain");
    let streamed = client.step("stream");
    client.quit();
    // Other processes on the host may be recorded too: wait for this client's two.
    let mine = format!(" pid {pid} ");
    agent.stderr.wait_for_nth(
        2,
        |l| is_live_line(l) && l.contains(&mine),
        TIMEOUT,
        String::new,
    );
    let finished = agent.stop("TERM");
    assert!(finished.status.success(), "{}", finished.dump());

    let recorded: Vec<Value> = exchanges(out.path())
        .into_iter()
        .filter(|e| e["process"]["pid"] == pid)
        .collect();
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    assert_steps_recorded(&recorded, pid, &plain, &streamed);
    assert_summary_matches_disk(&finished, out.path());
    // The fake provider (a TLS server in the capture's view) is not recorded as a client.
    assert!(
        finished.summary["connections"]["server_connections"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{}",
        finished.dump()
    );
}

#[test]
fn a_removed_cgroup_ends_the_capture() {
    if !privileged("capture --cgroup of a removed cgroup") {
        return;
    }
    let _everywhere = breakpoints_everywhere();
    let ca = TestCa::new();
    let out = tempfile::tempdir().expect("tempdir");
    let cgroup = TestCgroup::new();
    let path: &Path = cgroup.path();
    let agent = Agent::start(out.path(), &ca, &["--cgroup".into(), path.into()]);
    drop(cgroup);
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_summary_matches_disk(&finished, out.path());
}

/// Python's `ssl` module reading from an empty memory BIO: every `read` is one
/// `SSL_read_ex` through the system libssl, with no network. Runs the calls on
/// a line of stdin, says `done`, and stays alive until stdin closes.
const SSL_CALLS_SCRIPT: &str = r"
import ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
sys.stdin.readline()
for _ in range(100):
    try:
        tls.read(1)
    except ssl.SSLWantReadError:
        pass
print('done', flush=True)
sys.stdin.read()
";

/// The kernel maps its `[uprobes]` stepping area into a process at its first
/// breakpoint hit.
fn hit_a_breakpoint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("maps")
        .contains("[uprobes]")
}

#[test]
fn pid_mode_plants_breakpoints_in_its_targets_only() {
    if !privileged("capture --pid") {
        return;
    }
    let _alone = BREAKPOINTS_EVERYWHERE
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    let ca = TestCa::new();
    let out = tempfile::tempdir().expect("tempdir");
    let start = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SSL_CALLS_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        ChildGuard::spawn(&mut cmd, "python3 ssl calls")
    };
    let (mut target, mut other) = (start(), start());
    let target_pid = target.child_mut().id();
    let agent = Agent::start(
        out.path(),
        &ca,
        &["--pid".into(), target_pid.to_string().into()],
    );
    for client in [&mut target, &mut other] {
        let child = client.child_mut();
        writeln!(child.stdin.as_mut().expect("piped"), "go").expect("go");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("done");
        assert_eq!(line.trim(), "done");
    }
    assert!(
        hit_a_breakpoint(target_pid),
        "the target's SSL_read_ex calls went through the probes"
    );
    assert!(
        !hit_a_breakpoint(other.child_mut().id()),
        "a process outside --pid using the same libssl carries no breakpoint"
    );
    drop(other);
    drop(target.child_mut().stdin.take());
    let _ = target.child_mut().wait();
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
}

/// Python's `ssl` module reading from an empty memory BIO at once (as in
/// [`SSL_CALLS_SCRIPT`]), then saying whether the kernel mapped its `[uprobes]`
/// area into this process, and staying alive until stdin closes.
const SSL_CALLS_THEN_CHECK_SCRIPT: &str = r"
import ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
for _ in range(100):
    try:
        tls.read(1)
    except ssl.SSLWantReadError:
        pass
print('breakpoint' if '[uprobes]' in open('/proc/self/maps').read() else 'none', flush=True)
sys.stdin.read()
";

fn ssl_calls_then_check_argv() -> Vec<OsString> {
    vec![
        "python3".into(),
        "-c".into(),
        SSL_CALLS_THEN_CHECK_SCRIPT.into(),
    ]
}

/// A process outside the capture, started while it runs, makes its `SSL_read_ex` calls and
/// carries no breakpoint.
fn assert_bystander_untouched() {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SSL_CALLS_THEN_CHECK_SCRIPT]);
    let bystander = run_command(cmd, "python3 ssl calls outside the capture", TIMEOUT);
    bystander.assert_success();
    assert_eq!(
        bystander.stdout.trim(),
        "none",
        "a process outside the capture using the same libssl carries no breakpoint"
    );
}

#[test]
fn command_mode_plants_breakpoints_in_its_processes_only() {
    if !privileged("capture -- CMD") {
        return;
    }
    let _alone = BREAKPOINTS_EVERYWHERE
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    let ca = TestCa::new();
    let out = tempfile::tempdir().expect("tempdir");
    let mut args = vec![OsString::from("--")];
    args.extend(ssl_calls_then_check_argv());
    let agent = Agent::spawn_with(out.path(), &ca, &args, |cmd| {
        cmd.stdin(Stdio::piped());
    });
    agent.wait_started();
    agent
        .stdout
        .wait_for(|l| l == "breakpoint" || l == "none", TIMEOUT, String::new);
    assert_bystander_untouched();
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(
        finished.command_stdout(),
        ["breakpoint"],
        "the command's SSL_read_ex calls, made at once, went through the probes\n{}",
        finished.dump()
    );
}

#[test]
fn cgroup_mode_plants_breakpoints_in_its_processes_only() {
    if !privileged("capture --cgroup") {
        return;
    }
    let _alone = BREAKPOINTS_EVERYWHERE
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    let ca = TestCa::new();
    let out = tempfile::tempdir().expect("tempdir");
    let cgroup = TestCgroup::new();
    let agent = Agent::start(
        out.path(),
        &ca,
        &["--cgroup".into(), cgroup.relative().into()],
    );
    let mut cmd = cgroup.command(&ssl_calls_then_check_argv());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut target = ChildGuard::spawn(&mut cmd, "python3 ssl calls in the cgroup");
    let mut line = String::new();
    BufReader::new(target.child_mut().stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("the target's answer");
    assert_eq!(
        line.trim(),
        "breakpoint",
        "the cgroup's process's SSL_read_ex calls, made at once, went through the probes"
    );
    assert_bystander_untouched();
    drop(target.child_mut().stdin.take());
    let _ = target.child_mut().wait();
    let finished = agent.stop("INT");
    assert!(finished.status.success(), "{}", finished.dump());
}

/// A capture whose target makes no TLS call sleeps: the ring buffer is drained on a timer
/// that backs off while nothing arrives (`agent/src/drain_pace.rs`). Over 3 s of a quiet
/// target the agent wakes about 50 times (drains and rescans), where a fixed 10 ms drain
/// woke it more than 300 times.
#[test]
fn an_idle_capture_wakes_rarely() {
    if !privileged("capture --pid") {
        return;
    }
    let ca = TestCa::new();
    let out = tempfile::tempdir().expect("tempdir");
    let sleeper = ChildGuard::spawn(Command::new("sleep").arg("60"), "sleep 60");
    let agent = Agent::start(
        out.path(),
        &ca,
        &["--pid".into(), sleeper.id().to_string().into()],
    );
    // Long enough for the drain's wait to reach its longest.
    std::thread::sleep(Duration::from_secs(1));
    let agent_pid = agent.child.id();
    let before = voluntary_switches(agent_pid);
    std::thread::sleep(Duration::from_secs(3));
    let woken = voluntary_switches(agent_pid) - before;
    let finished = agent.stop("INT");
    assert!(finished.status.success(), "{}", finished.dump());
    assert!(
        woken <= 100,
        "the capture of a quiet process woke {woken} times in 3 s\n{}",
        finished.dump()
    );
}

/// The times every thread of `pid` gave up its CPU to wait (`voluntary_ctxt_switches`).
fn voluntary_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the agent's threads");
    tasks
        .flatten()
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}
