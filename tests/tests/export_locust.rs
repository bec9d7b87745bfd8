//! `llmsim-agent export --locust`: a snapshot's inbound requests become a locustfile that
//! Locust's own distributed mode runs. The snapshot is written here: three `POST /triage`
//! requests, each with one real ticket of the triage demo, as `capture --app-port` records
//! them, and one outbound exchange that must not become a task. The exported file is read
//! back with Python's own parser: one task per inbound request, its body the recorded bytes,
//! no header that describes the connection or holds a redacted value. Then one master and two
//! workers run it headless for a few seconds against the triage demo served as an HTTP app
//! (`app.py --serve`) under `replayd`, on the loopback of the test's own namespace: every
//! request succeeds with the recorded status, both workers sent some, and replayd served the
//! app's LLM calls, twelve per ticket (three steps for each of the four providers), with no
//! miss.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use llmsim_tests::{
    ChildGuard, Lines, TestNetns, flows::REPLAY_API_KEYS, llmsim_agent, privileged, replayd,
    repo_root, run_command, snapshot::write_exchanges,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The app's port, on the loopback of the test's own namespace.
const APP_PORT: u16 = 8080;

/// Tickets of `examples/triage/tickets.json` recorded as inbound requests.
const TICKETS: usize = 3;

/// LLM calls the triage app makes for one ticket: three steps for each of four providers.
const CALLS_PER_TICKET: u64 = 12;

/// Prints, as JSON, the arguments of every `self.send(...)` call in the locustfile given as
/// argv[1], its body as hex: what Python itself reads from the file.
const READ_TASKS: &str = r#"
import ast, json, sys
tree = ast.parse(open(sys.argv[1], encoding="utf-8").read())
tasks = []
for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "send":
        name, method, path, headers, body, status = (ast.literal_eval(a) for a in node.args)
        tasks.append({"name": name, "method": method, "path": path, "headers": headers,
                      "body": body.hex(), "status": status})
print(json.dumps(tasks))
"#;

/// Loaded beside the exported file by the master and the workers: the master counts the
/// requests each worker reports and writes the counts to `$PER_WORKER` as it quits.
const PER_WORKER: &str = r#"
import collections, json, os
from locust import events
from locust.runners import MasterRunner

requests = collections.Counter()

@events.worker_report.add_listener
def count(client_id, data, **kwargs):
    requests[client_id] += data["stats_total"]["num_requests"]

@events.quitting.add_listener
def write(environment, **kwargs):
    if isinstance(environment.runner, MasterRunner):
        with open(os.environ["PER_WORKER"], "w") as out:
            json.dump(requests, out)
"#;

/// The inbound snapshot: each ticket `POST`ed to `/triage` as a client sends it, with
/// headers that must not be resent (the connection's, `Host`, `Content-Length`, a redacted
/// `Authorization`); and one outbound exchange. Returns the recorded request bodies.
fn write_inbound_snapshot(dir: &Path) -> Vec<Vec<u8>> {
    let tickets: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/triage/tickets.json"))
            .expect("tickets.json"),
    )
    .expect("tickets.json is JSON");
    let bodies: Vec<Vec<u8>> = tickets[..TICKETS]
        .iter()
        .map(|ticket| serde_json::to_vec(ticket).expect("a ticket as JSON"))
        .collect();
    let mut exchanges: Vec<Value> = bodies
        .iter()
        .map(|body| {
            let text = String::from_utf8(body.clone()).expect("JSON is UTF-8");
            json!({
                "direction": "inbound",
                "host": "127.0.0.1",
                "scheme": "http",
                "request": {
                    "method": "POST",
                    "path": "/triage",
                    "headers": [
                        ["Host", format!("127.0.0.1:{APP_PORT}")],
                        ["User-Agent", "support-desk/1.4"],
                        ["Accept", "application/json"],
                        ["Content-Type", "application/json"],
                        ["Content-Length", body.len().to_string()],
                        ["Authorization", "Bearer <redacted:0badc0de>"],
                        ["Connection", "keep-alive"],
                    ],
                    "body": {"kind": "text", "text": text},
                },
                "response": {
                    "status": 200,
                    "headers": [["Content-Type", "application/json"]],
                    "body": {"kind": "text", "text": "{}"},
                },
            })
        })
        .collect();
    exchanges.insert(
        1,
        json!({
            "provider": "openai", "host": "api.openai.com", "scheme": "https",
            "request": {"method": "GET", "path": "/v1/models", "headers": [], "body": {"kind": "empty"}},
            "response": {"status": 200, "headers": [], "body": {"kind": "text", "text": "{}"}},
        }),
    );
    write_exchanges(dir, exchanges);
    bodies
}

/// Exports the snapshot in `snapshot` to `locustfile` and checks what Python reads from it.
fn export_and_read_back(snapshot: &Path, locustfile: &Path, bodies: &[Vec<u8>]) {
    let mut export = std::process::Command::new(llmsim_agent());
    export
        .args(["export", "--locust"])
        .arg(locustfile)
        .args(["--host", &format!("http://127.0.0.1:{APP_PORT}")])
        .arg(snapshot);
    let output = run_command(export, "export --locust", TIMEOUT);
    output.assert_success();
    assert!(
        output.stderr.contains(&format!(
            "wrote {TICKETS} requests to {} (0 incomplete left out)",
            locustfile.display()
        )),
        "{output}"
    );

    let mut read = std::process::Command::new("python3");
    read.args(["-c", READ_TASKS]).arg(locustfile);
    let tasks = run_command(read, "reading the locustfile's tasks", TIMEOUT);
    tasks.assert_success();
    let tasks = tasks.json();
    let tasks = tasks.as_array().expect("a list of tasks");
    assert_eq!(
        tasks.len(),
        TICKETS,
        "one task per inbound request: {tasks:#?}"
    );
    for (task, body) in tasks.iter().zip(bodies) {
        assert_eq!(task["name"], "POST /triage", "{task}");
        assert_eq!(task["method"], "POST", "{task}");
        assert_eq!(task["path"], "/triage", "{task}");
        assert_eq!(task["status"], 200, "{task}");
        assert_eq!(
            task["headers"],
            json!({
                "User-Agent": "support-desk/1.4",
                "Accept": "application/json",
                "Content-Type": "application/json",
            }),
            "{task}"
        );
        let sent = hex_bytes(task["body"].as_str().expect("the body as hex"));
        assert_eq!(&sent, body, "the task sends other bytes than were recorded");
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `python3 -m locust -f FILES ARGS` in `netns`, with `$PER_WORKER` set.
fn locust(
    netns: &TestNetns,
    files: &str,
    per_worker: &Path,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = netns.command("python3");
    cmd.args(["-m", "locust", "-f", files])
        .args(args)
        .env("PER_WORKER", per_worker)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// The triage demo serving `POST /triage` on [`APP_PORT`] in `netns`, under replayd from its
/// bundled recording; and replayd's stderr, read once the app listens.
fn start_app(netns: &TestNetns) -> (ChildGuard, Lines) {
    // Instant answers: the recorded calls took 0.6 s each, twelve per ticket.
    let mut app_cmd = netns.command(replayd());
    app_cmd
        .args(["--pace", "instant", "--in"])
        .arg(repo_root().join("examples/triage/llmsim"))
        .args(["--", "python3"])
        .arg(repo_root().join("examples/triage/app.py"))
        .args(["--serve", &format!("127.0.0.1:{APP_PORT}")])
        .envs(REPLAY_API_KEYS.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // replayd hands the app its own CA, as on a CI runner.
        .env_remove("SSL_CERT_FILE")
        .env_remove("REQUESTS_CA_BUNDLE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut app = ChildGuard::spawn(&mut app_cmd, "the triage app under replayd");
    let stderr = app.child_mut().stderr.take().expect("piped stderr");
    let mut app_lines = Lines::new(stderr, "the triage app under replayd");
    app_lines.wait_for(
        |l| l.starts_with("triage: serving on"),
        TIMEOUT,
        String::new,
    );

    (app, app_lines)
}

/// Runs `locustfile` with one master and two workers in `netns`, checks that every request
/// succeeded and that both workers sent some; returns the requests sent.
fn run_fleet(netns: &TestNetns, work: &Path, locustfile: &Path) -> u64 {
    let files = format!(
        "{},{}",
        locustfile.display(),
        work.join("per_worker.py").display()
    );
    std::fs::write(work.join("per_worker.py"), PER_WORKER).expect("write per_worker.py");
    let per_worker = work.join("per_worker.json");
    let mut workers: Vec<ChildGuard> = (0..2)
        .map(|i| {
            let mut cmd = locust(
                netns,
                &files,
                &per_worker,
                &[
                    "--worker",
                    "--master-host",
                    "127.0.0.1",
                    "--master-port",
                    "5557",
                ],
            );
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            ChildGuard::spawn(&mut cmd, &format!("locust worker {i}"))
        })
        .collect();
    let master = run_command(
        locust(
            netns,
            &files,
            &per_worker,
            &[
                "--headless",
                "--master",
                "--master-bind-host",
                "127.0.0.1",
                "--master-bind-port",
                "5557",
                "--expect-workers",
                "2",
                "--expect-workers-max-wait",
                "60",
                "--users",
                "4",
                "--spawn-rate",
                "4",
                "--run-time",
                "6s",
                "--json",
            ],
        ),
        "locust master",
        TIMEOUT,
    );
    for worker in workers.drain(..) {
        worker.wait_timeout(TIMEOUT);
    }
    master.assert_success();

    let stats = master.json();
    let entries = stats.as_array().expect("Locust's JSON stats: a list");
    assert!(!entries.is_empty(), "{master}");
    let mut requests = 0;
    for entry in entries {
        assert_eq!(entry["name"], "POST /triage", "{master}");
        assert_eq!(entry["num_failures"], 0, "{master}");
        requests += entry["num_requests"].as_u64().expect("num_requests");
    }
    assert!(requests > 0, "{master}");
    let counts: Value = serde_json::from_str(
        &std::fs::read_to_string(&per_worker).expect("the master wrote the per-worker counts"),
    )
    .expect("per-worker counts are JSON");
    let counts = counts.as_object().expect("counts by worker");
    assert_eq!(counts.len(), 2, "two workers reported: {counts:?}");
    for (worker, count) in counts {
        assert!(
            count.as_u64() > Some(0),
            "worker {worker} sent nothing: {counts:?}"
        );
    }

    requests
}

#[test]
fn an_exported_locustfile_runs_distributed_against_the_triage_app_under_replay() {
    let work = tempfile::tempdir().expect("tempdir");
    let snapshot = work.path().join("llmsim");
    let bodies = write_inbound_snapshot(&snapshot);
    let locustfile = work.path().join("locustfile.py");
    export_and_read_back(&snapshot, &locustfile, &bodies);

    if !privileged("a Locust fleet against the triage demo under replay") {
        return;
    }
    let netns = TestNetns::offline();
    let (app, mut app_lines) = start_app(&netns);
    let requests = run_fleet(&netns, work.path(), &locustfile);

    app.signal("TERM");
    let served = app_lines.wait_for(|l| l.starts_with("replayd: served "), TIMEOUT, String::new);
    let count: u64 = served
        .strip_prefix("replayd: served ")
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count in {served:?}"));
    assert!(served.ends_with(", 0 misses"), "{served}");
    assert!(
        count >= CALLS_PER_TICKET * requests,
        "replayd served {count} LLM calls for {requests} tickets: {served}"
    );
    app.wait_timeout(TIMEOUT);
}
