//! Processes that start after the capture began are captured: `-- CMD` is a shell that later
//! forks and execs a Python client (dynamic libssl) and then a Node client (OpenSSL linked into
//! the node binary). Each exchange names the process that made it, as it was then, even when the
//! exchange only ended with that process. And a TLS binary the agent has never seen (a copy of
//! node, so a new inode that nothing attached to in advance) is attached when it is exec'd.
//! A process that makes its first TLS call at once (curl), started directly as `-- CMD` or
//! exec'd in a `--cgroup`, with nothing holding it, is recorded whole, and so is a child forked
//! with a TLS connection open, which writes on it at once, without an exec.

mod capture_support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use capture_support::{
    Agent, Finished, TIMEOUT, assert_summary_matches_disk, exchange_with_nonce, exchanges,
};
use llmsim_tests::{
    ClientReport, FakeProvider, FakeProviderConfig, TEST_API_KEYS, TestCa, TestCgroup, TestNetns,
    client_script, ensure_node_client, find_nonce, privileged, run_command,
};
use serde_json::Value;

#[test]
fn a_shell_that_later_runs_python_then_node_is_captured_whole() {
    if !privileged("capture of processes started later") {
        return;
    }
    ensure_node_client();
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");

    let script = r#"python3 "$0" && node "$1""#;
    let mut args = vec![OsString::from("--")];
    args.extend(netns.exec_prefix());
    args.extend([
        "sh".into(),
        "-c".into(),
        script.into(),
        client_script("openai_chat.py").into_os_string(),
        client_script("openai_node.mjs").into_os_string(),
    ]);
    let agent = Agent::start(out.path(), &ca, &args);
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());

    let reports: Vec<ClientReport> = finished
        .command_stdout()
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let value: Value = serde_json::from_str(l).expect("client report");
            ClientReport::from_json(&value).expect("client report shape")
        })
        .collect();
    assert_eq!(reports.len(), 2, "{}", finished.dump());
    assert_eq!(provider.requests().len(), 4);

    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 4, "{}", finished.dump());
    let mut pids = Vec::new();
    for (report, comm, exe) in [
        (&reports[0], "python3", "python"),
        (&reports[1], "node", "node"),
    ] {
        for result in &report.results {
            let nonce = find_nonce(result.text.as_deref().unwrap_or_default()).expect("nonce");
            let exchange = exchange_with_nonce(&recorded, &nonce);
            assert_eq!(exchange["process"]["comm"], comm, "{exchange:#}");
            assert!(
                exchange["process"]["exe"]
                    .as_str()
                    .is_some_and(|path| path.contains(exe)),
                "{exchange:#}"
            );
            assert_eq!(exchange["streamed"], result.stream);
            assert!(exchange["incomplete"].is_null(), "{exchange:#}");
            pids.push(exchange["process"]["pid"].as_u64().expect("pid"));
        }
    }
    assert_eq!(
        pids[0], pids[1],
        "both Python exchanges come from one process"
    );
    assert_eq!(
        pids[2], pids[3],
        "both Node exchanges come from one process"
    );
    assert_ne!(pids[0], pids[2], "Python and Node are different processes");
    // File names sort in the order exchanges were written. Python's plain one comes first; its
    // streamed one is written when its connection ends, which the agent learns only when the
    // process has exited (the client stops reading at `[DONE]`), so it may follow Node's first.
    assert_eq!(recorded[0]["process"]["comm"], "python3");
    assert_eq!(recorded[0]["streamed"], false);
    assert_summary_matches_disk(&finished, out.path());
}

#[test]
fn a_tls_binary_first_seen_at_its_exec_is_attached_and_captured() {
    if !privileged("capture of a TLS binary first seen at exec") {
        return;
    }
    ensure_node_client();
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let bin = tempfile::tempdir().expect("tempdir");
    let node = bin.path().join("node-copy");
    let system_node = which_node();
    std::fs::copy(&system_node, &node).unwrap_or_else(|e| {
        panic!(
            "copying {} to {}: {e}",
            system_node.display(),
            node.display()
        )
    });

    // The copy's path is inside the shell script, so nothing on the command line names it.
    let script = format!(
        "exec '{}' '{}'",
        node.display(),
        client_script("openai_node_after_stdin.mjs").display()
    );
    let mut args = vec![OsString::from("--")];
    args.extend(netns.exec_prefix());
    args.extend(["sh".into(), "-c".into(), script.into()]);
    let mut agent = Agent::spawn_with(out.path(), &ca, &args, |cmd| {
        cmd.env("LLMSIM_LOG", "info").stdin(Stdio::piped());
    });
    agent.wait_started();
    agent.stderr.wait_for(
        |l| l.contains("attached to a TLS library") && l.contains("node-copy"),
        TIMEOUT,
        String::new,
    );
    agent.send_line("go");
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());

    let report: Value = serde_json::from_str(finished.command_stdout().join("\n").trim())
        .unwrap_or_else(|e| panic!("client report ({e})\n{}", finished.dump()));
    let report = ClientReport::from_json(&report).expect("client report shape");
    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    assert_eq!(provider.requests().len(), 2);
    for result in &report.results {
        let nonce = find_nonce(result.text.as_deref().unwrap_or_default()).expect("nonce");
        let exchange = exchange_with_nonce(&recorded, &nonce);
        assert!(
            exchange["process"]["exe"]
                .as_str()
                .is_some_and(|exe| exe.ends_with("node-copy")),
            "{exchange:#}"
        );
        assert!(exchange["incomplete"].is_null(), "{exchange:#}");
        assert_eq!(exchange["streamed"], result.stream);
    }
    assert_summary_matches_disk(&finished, out.path());
}

/// The node binary on PATH.
fn which_node() -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").expect("PATH"))
        .map(|dir| dir.join("node"))
        .find(|path| path.is_file())
        .expect("node is installed")
}

/// curl posting one chat completion straight to `provider`: its first TLS call comes within a
/// millisecond or so of its exec, with nothing holding it.
fn curl_argv(provider: &FakeProvider, ca: &TestCa) -> Vec<OsString> {
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"At once."}]}"#;
    vec![
        "curl".into(),
        "-sS".into(),
        "--fail".into(),
        "--cacert".into(),
        ca.ca_cert_path().into(),
        "-H".into(),
        format!("Authorization: Bearer {}", TEST_API_KEYS[0].1).into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-d".into(),
        body.into(),
        format!("{}/v1/chat/completions", provider.origin()).into(),
    ]
}

/// Python that opens a TLS connection (handshake done, libssl mapped and probed in the
/// parent), then forks: the child posts one chat completion on that connection at once and
/// exits, so its first TLS call is an `SSL_write` microseconds after `fork()`, with no exec
/// and no connect to announce it. The parent writes the child's pid to `argv[5]` and exits
/// with its status. The child's own probes must be planted before that call: a forked child
/// is held at its first syscall, inside `fork()`.
const FORKING_CLIENT: &str = r#"
import http.client, json, os, ssl, sys
host, port, cafile, key, pid_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
connection = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=cafile))
connection.connect()
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "From a forked child."}]})
pid = os.fork()
if pid == 0:
    connection.request("POST", "/v1/chat/completions", body,
                       {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    os._exit(0 if response.status == 200 else 1)
with open(pid_file, "w") as f:
    f.write(str(pid))
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// [`FORKING_CLIENT`]'s argv against `provider`, writing the child's pid to `pid_file`.
fn forking_client_argv(provider: &FakeProvider, ca: &TestCa, pid_file: &Path) -> Vec<OsString> {
    let addr = provider.addr();
    vec![
        "python3".into(),
        "-c".into(),
        FORKING_CLIENT.into(),
        addr.ip().to_string().into(),
        addr.port().to_string().into(),
        ca.ca_cert_path().into(),
        TEST_API_KEYS[0].1.into(),
        pid_file.into(),
    ]
}

/// `argv` run as `-- CMD` by an agent recording every host into `out`; it must succeed.
fn captured_as_command(out: &Path, ca: &TestCa, command: Vec<OsString>) -> Finished {
    let mut args: Vec<OsString> = vec!["--any-host".into(), "--".into()];
    args.extend(command);
    let finished = Agent::start(out, ca, &args).finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());
    finished
}

/// `argv` run in a cgroup that an agent captures (`--cgroup`), recording every host into
/// `out`; it must succeed and make one exchange.
fn captured_in_cgroup(out: &Path, ca: &TestCa, argv: &[OsString]) -> Finished {
    let cgroup = TestCgroup::new();
    let agent = Agent::start(
        out,
        ca,
        &[
            "--any-host".into(),
            "--cgroup".into(),
            cgroup.relative().into(),
        ],
    );
    // A shell that moves itself into the cgroup, then execs the client.
    run_command(cgroup.command(argv), "a client in the cgroup", TIMEOUT).assert_success();
    agent.wait_live_lines(1);
    let finished = agent.stop("INT");
    assert!(finished.status.success(), "{}", finished.dump());
    finished
}

/// The one request `provider` served is the one exchange `finished` recorded into `out`,
/// whole, by the process `process` names (a field of the exchange's `process` and its value).
fn assert_recorded_whole(
    provider: &FakeProvider,
    out: &Path,
    finished: &Finished,
    process: (&str, &Value),
) {
    let dump = finished.dump();
    let served = provider.requests();
    assert_eq!(served.len(), 1, "{dump}");
    let recorded = exchanges(out);
    assert_eq!(recorded.len(), 1, "{dump}");
    let exchange = &recorded[0];
    assert_eq!(&exchange["process"][process.0], process.1, "{exchange:#}");
    assert!(exchange["incomplete"].is_null(), "{exchange:#}");
    served[0].assert_recorded_as_sent(exchange);
    assert_summary_matches_disk(finished, out);
}

/// The pid [`FORKING_CLIENT`] wrote.
fn child_pid(pid_file: &Path) -> Value {
    let pid: u64 = std::fs::read_to_string(pid_file)
        .expect("the child's pid")
        .trim()
        .parse()
        .expect("a pid");
    pid.into()
}

/// What each test of a first TLS call made at once needs: the test CA, a fake provider on
/// loopback serving TLS with it, and a capture directory; None when the test is skipped
/// (unprivileged, outside CI).
fn at_once(what: &str) -> Option<(TestCa, FakeProvider, tempfile::TempDir)> {
    if !privileged(what) {
        return None;
    }
    let ca = TestCa::new();
    let provider = FakeProvider::start_on_loopback(Some(&ca), &FakeProviderConfig::default());
    Some((ca, provider, tempfile::tempdir().expect("tempdir")))
}

#[test]
fn a_command_that_makes_its_tls_call_at_once_is_captured_whole() {
    let Some((ca, provider, out)) = at_once("capture of a command's first TLS call") else {
        return;
    };
    let finished = captured_as_command(out.path(), &ca, curl_argv(&provider, &ca));
    assert_recorded_whole(&provider, out.path(), &finished, ("comm", &"curl".into()));
}

#[test]
fn a_process_that_joins_a_cgroup_and_makes_its_tls_call_at_once_is_captured_whole() {
    let Some((ca, provider, out)) = at_once("capture of a cgroup process's first TLS call") else {
        return;
    };
    let finished = captured_in_cgroup(out.path(), &ca, &curl_argv(&provider, &ca));
    assert_recorded_whole(&provider, out.path(), &finished, ("comm", &"curl".into()));
}

#[test]
fn a_forked_child_of_a_command_that_makes_its_tls_call_at_once_is_captured_whole() {
    let Some((ca, provider, out)) = at_once("capture of a forked child's first TLS call") else {
        return;
    };
    let pid_file = out.path().join("child.pid");
    let argv = forking_client_argv(&provider, &ca, &pid_file);
    let finished = captured_as_command(out.path(), &ca, argv);
    let child = child_pid(&pid_file);
    assert_recorded_whole(&provider, out.path(), &finished, ("pid", &child));
}

#[test]
fn a_forked_child_in_a_cgroup_that_makes_its_tls_call_at_once_is_captured_whole() {
    let Some((ca, provider, out)) =
        at_once("capture of a cgroup process's forked child's first TLS call")
    else {
        return;
    };
    let pid_file = out.path().join("child.pid");
    let argv = forking_client_argv(&provider, &ca, &pid_file);
    let finished = captured_in_cgroup(out.path(), &ca, &argv);
    let child = child_pid(&pid_file);
    assert_recorded_whole(&provider, out.path(), &finished, ("pid", &child));
}
