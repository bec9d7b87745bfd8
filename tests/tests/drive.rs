//! The regression replay and load driver against the triage demo served as an HTTP API
//! (`examples/triage/app.py --serve`), run under `replayd` in an offline network namespace.
//! The inbound recording is a fixture this file writes: a reference run of the app under
//! replayd answers POST /triage for the first tickets, and each request with its answer
//! becomes an inbound exchange beside the demo's outbound ones. Then: (a) a replay finds
//! no difference; (b) a copy of the app with one prompt edited gets the diff and exit 1;
//! (c) load runs count what they sent; (d) `replayd --drive` does it all in one command;
//! (e) the driver's metrics agree with its summary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use llmsim_tests::flows::REPLAY_API_KEYS;
use llmsim_tests::{
    ChildGuard, CommandOutput, Lines, TestNetns, llmsim_agent, privileged, replayd, repo_root,
    run_command,
};
use serde_json::{Value, json};

/// Tickets in the fixture.
const TICKETS: usize = 3;
/// LLM calls the app makes per ticket: three steps for each of the four providers.
const CALLS_PER_TICKET: u64 = 12;
/// The app's address inside each test's own network namespace, where no other process
/// can hold the port.
const APP: &str = "127.0.0.1:8080";
const METRICS: &str = "127.0.0.1:9464";
const TIMEOUT: Duration = Duration::from_secs(300);

/// Run under replayd: starts the app, posts the first N tickets, and writes each ticket
/// with the status, headers and body it got.
const REFERENCE: &str = r#"
import json, subprocess, sys, urllib.error, urllib.request
app, address, tickets, n, out = sys.argv[1:6]
proc = subprocess.Popen([sys.executable, app, "--serve", address], stderr=subprocess.PIPE, text=True)
for line in proc.stderr:
    if "serving on" in line:
        break
answers = []
for ticket in json.load(open(tickets))[:int(n)]:
    request = urllib.request.Request(f"http://{address}/triage", data=json.dumps(ticket).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        response = urllib.request.urlopen(request)
    except urllib.error.HTTPError as e:
        response = e
    answers.append({"ticket": ticket, "status": response.status,
                    "headers": list(response.headers.items()), "body": response.read().decode()})
proc.terminate()
proc.wait()
json.dump(answers, open(out, "w"))
"#;

fn triage_dir() -> PathBuf {
    repo_root().join("examples/triage")
}

/// The demo's outbound recording plus the inbound fixture, made once per test binary.
fn fixture() -> &'static Path {
    static FIXTURE: OnceLock<tempfile::TempDir> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let exchanges = dir.path().join("exchanges");
            std::fs::create_dir(&exchanges).expect("exchanges/");
            for entry in std::fs::read_dir(triage_dir().join("llmsim/exchanges")).expect("demo") {
                let entry = entry.expect("demo exchange");
                std::fs::copy(entry.path(), exchanges.join(entry.file_name())).expect("copy");
            }
            let answers_file = dir.path().join("reference.json");
            let offline = TestNetns::offline();
            let mut cmd = replayd_command(&offline, &triage_dir().join("llmsim"));
            cmd.arg("--")
                .arg("python3")
                .arg("-c")
                .arg(REFERENCE)
                .arg(triage_dir().join("app.py"))
                .arg(APP)
                .arg(triage_dir().join("tickets.json"))
                .arg(TICKETS.to_string())
                .arg(&answers_file);
            run_command(cmd, "reference run of the triage API", TIMEOUT).assert_success();
            let answers: Vec<Value> = serde_json::from_str(
                &std::fs::read_to_string(&answers_file).expect("reference answers"),
            )
            .expect("reference answers are JSON");
            assert_eq!(answers.len(), TICKETS);
            let inbound = answers.iter().map(|answer| {
                assert_eq!(answer["status"], 200, "reference answer: {answer}");
                let body: Value =
                    serde_json::from_str(answer["body"].as_str().expect("body")).expect("JSON");
                json!({
                    "direction": "inbound",
                    "linked": (1..=CALLS_PER_TICKET).collect::<Vec<_>>(),
                    "request": {
                        "method": "POST",
                        "path": "/triage",
                        "headers": [["Host", APP], ["Content-Type", "application/json"]],
                        "body": {"kind": "json", "json": answer["ticket"]},
                    },
                    "response": {
                        "status": 200,
                        "headers": answer["headers"],
                        "body": {"kind": "json", "json": body},
                    },
                })
            });
            llmsim_tests::snapshot::write_exchanges(dir.path(), inbound);
            std::fs::write(
                dir.path().join("llmsim.toml"),
                "[compare]\njson_pointers = [\"/elapsed_ms\"]\n",
            )
            .expect("llmsim.toml");
            dir
        })
        .path()
}

/// replayd in `offline` serving `snapshot` at once (no recorded pacing), with dummy keys.
fn replayd_command(offline: &TestNetns, snapshot: &Path) -> Command {
    let mut cmd = offline.command(replayd());
    cmd.arg("--in")
        .arg(snapshot)
        .args(["--pace", "instant"])
        .envs(REPLAY_API_KEYS.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// The triage API (`app`) served under replayd in `offline`, ready for requests.
struct ServedApp {
    _replayd: ChildGuard,
    _stderr: Lines,
}

impl ServedApp {
    fn start(offline: &TestNetns, app: &Path) -> Self {
        let mut cmd = replayd_command(offline, fixture());
        cmd.arg("--")
            .arg("python3")
            .arg(app)
            .args(["--serve", APP])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut replayd = ChildGuard::spawn(&mut cmd, "the triage API under replayd");
        let mut stderr = Lines::new(
            replayd.child_mut().stderr.take().expect("stderr is piped"),
            "the triage API under replayd",
        );
        stderr.wait_for(|l| l.contains("serving on"), TIMEOUT, String::new);
        Self {
            _replayd: replayd,
            _stderr: stderr,
        }
    }
}

fn drive(offline: &TestNetns, args: &[&str], what: &str) -> CommandOutput {
    let mut cmd = offline.command(llmsim_agent());
    cmd.arg("replay")
        .args(["--target", &format!("http://{APP}")])
        .args(args)
        .arg(fixture());
    run_command(cmd, what, TIMEOUT)
}

fn count(summary: &Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {summary}"))
}

#[test]
fn a_replay_of_the_unchanged_app_finds_no_difference() {
    if !privileged("drive: regression replay") {
        return;
    }
    let offline = TestNetns::offline();
    let _app = ServedApp::start(&offline, &triage_dir().join("app.py"));
    let output = drive(&offline, &[], "regression replay");
    assert_eq!(output.status.code(), Some(0), "{output}");
    let calls = CALLS_PER_TICKET * TICKETS as u64;
    for line in [
        format!("drive: {TICKETS} requests in "),
        format!("{TICKETS} as recorded, 0 differing, 0 errors"),
        format!("drive: statuses: 200 {TICKETS}"),
        format!("drive: {calls} LLM calls (linked in the recording)"),
    ] {
        assert!(output.stdout.contains(&line), "no {line:?} in\n{output}");
    }
    assert!(!output.stdout.contains("difference:"), "{output}");
}

#[test]
fn an_edited_prompt_shows_the_diff_and_fails() {
    if !privileged("drive: edited prompt") {
        return;
    }
    let edited = tempfile::tempdir().expect("tempdir");
    let source = std::fs::read_to_string(triage_dir().join("app.py")).expect("app.py");
    let prompt = "in at most 80 words";
    assert!(source.contains(prompt), "app.py no longer says {prompt:?}");
    let app = edited.path().join("app.py");
    std::fs::write(&app, source.replace(prompt, "in at most 60 words")).expect("edited app.py");
    std::fs::copy(
        triage_dir().join("tickets.json"),
        edited.path().join("tickets.json"),
    )
    .expect("tickets.json");
    let offline = TestNetns::offline();
    let _app = ServedApp::start(&offline, &app);
    let output = drive(&offline, &[], "regression replay of the edited app");
    assert_eq!(output.status.code(), Some(1), "{output}");
    for expected in [
        "difference: exchange ".to_owned(),
        "  status\n    - 200\n    + 502\n".to_owned(),
        "  body /results/openai\n".to_owned(),
        "  body /errors/0\n    - (missing)\n    + \"openai (".to_owned(),
        format!("0 as recorded, {TICKETS} differing, 0 errors"),
    ] {
        assert!(
            output.stdout.contains(&expected),
            "no {expected:?} in\n{output}"
        );
    }
    assert!(!output.stdout.contains("elapsed_ms"), "{output}");
}

#[test]
fn load_runs_count_every_request() {
    if !privileged("drive: load") {
        return;
    }
    let offline = TestNetns::offline();
    let _app = ServedApp::start(&offline, &triage_dir().join("app.py"));

    let closed = drive(
        &offline,
        &["--multiply", "3", "--concurrency", "4", "--json"],
        "closed-loop load",
    );
    assert_eq!(closed.status.code(), Some(0), "{closed}");
    let summary = closed.json();
    let sent = 3 * TICKETS as u64;
    assert_eq!(summary["mode"], "closed-loop", "{summary}");
    assert_eq!(count(&summary, "concurrency"), 4);
    assert_eq!(count(&summary, "requests"), sent, "{summary}");
    assert_eq!(count(&summary, "ok"), sent, "{summary}");
    assert_eq!(count(&summary, "differing"), 0, "{summary}");
    assert_eq!(summary["errors"], json!({}), "{summary}");
    assert_eq!(summary["statuses"], json!({"200": sent}), "{summary}");
    assert_eq!(
        summary["llm_calls"],
        json!({"count": sent * CALLS_PER_TICKET, "source": "recording"})
    );
    let latency = &summary["latency_ms"];
    let p = |k: &str| {
        latency[k]
            .as_f64()
            .unwrap_or_else(|| panic!("no {k} in {summary}"))
    };
    assert!(
        0.0 < p("p50") && p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"),
        "{summary}"
    );
    assert!(
        summary["throughput_rps"].as_f64().is_some_and(|r| r > 0.0),
        "{summary}"
    );

    let open = drive(
        &offline,
        &["--rate", "20", "--duration", "2s", "--json"],
        "open-loop load",
    );
    assert_eq!(open.status.code(), Some(0), "{open}");
    let summary = open.json();
    // Requests are scheduled at k/20 s for every k with k/20 < 2.
    assert_eq!(summary["mode"], "open-loop", "{summary}");
    assert_eq!(summary["rate"], json!(20.0));
    assert_eq!(count(&summary, "requests"), 40, "{summary}");
    assert_eq!(count(&summary, "ok"), 40, "{summary}");
    assert_eq!(summary["statuses"], json!({"200": 40}), "{summary}");
    assert_eq!(count(&summary["llm_calls"], "count"), 40 * CALLS_PER_TICKET);
}

#[test]
fn replayd_drive_runs_the_app_and_the_replay_in_one_command() {
    if !privileged("drive: replayd --drive") {
        return;
    }
    let offline = TestNetns::offline();
    let mut cmd = replayd_command(&offline, fixture());
    cmd.args(["--drive", &format!("http://{APP}"), "--multiply", "2", "--"])
        .arg("python3")
        .arg(triage_dir().join("app.py"))
        .args(["--serve", APP]);
    let output = run_command(cmd, "replayd --drive", TIMEOUT);
    assert_eq!(output.status.code(), Some(0), "{output}");
    let sent = 2 * TICKETS as u64;
    for line in [
        format!("drive: {sent} requests in "),
        format!("{sent} as recorded, 0 differing, 0 errors"),
        format!(
            "drive: {} LLM calls (served by replayd)",
            sent * CALLS_PER_TICKET
        ),
    ] {
        assert!(output.stdout.contains(&line), "no {line:?} in\n{output}");
    }
    assert!(
        output.stderr.contains(&format!(
            "replayd: served {} requests",
            sent * CALLS_PER_TICKET
        )),
        "{output}"
    );

    // The app answering somewhere else is a clear failure, not a hang.
    let mut cmd = replayd_command(&offline, fixture());
    cmd.args([
        "--drive",
        "http://127.0.0.1:8081",
        "--drive-wait",
        "2s",
        "--",
    ])
    .arg("python3")
    .arg(triage_dir().join("app.py"))
    .args(["--serve", APP]);
    let output = run_command(cmd, "replayd --drive to the wrong port", TIMEOUT);
    assert_eq!(output.status.code(), Some(1), "{output}");
    assert!(
        output
            .stderr
            .contains("127.0.0.1:8081 accepted no connection within 2s"),
        "{output}"
    );
}

/// The driver's metrics, as `name{labels} value` lines; [`metric`] reads a counter, gauge
/// or histogram count (0 until it has a line).
fn scrape(offline: &TestNetns) -> String {
    let mut cmd = offline.command("python3");
    cmd.args([
        "-c",
        "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
        &format!("http://{METRICS}/metrics"),
    ]);
    run_command(cmd, "scrape", Duration::from_secs(30))
        .assert_success()
        .stdout
        .clone()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |value| {
            value
                .parse()
                .unwrap_or_else(|e| panic!("{name}: {value}: {e}"))
        })
}

#[test]
fn metrics_scraped_during_a_run_agree_with_its_summary() {
    if !privileged("drive: metrics") {
        return;
    }
    let offline = TestNetns::offline();
    let _app = ServedApp::start(&offline, &triage_dir().join("app.py"));
    let mut cmd = offline.command(llmsim_agent());
    cmd.arg("replay")
        .args(["--target", &format!("http://{APP}")])
        .args(["--rate", "10", "--duration", "3s", "--json"])
        .args(["--metrics", METRICS, "--metrics-linger", "60s"])
        .arg(fixture())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut driver = ChildGuard::spawn(&mut cmd, "the driver");
    let mut stdout = Lines::new(
        driver.child_mut().stdout.take().expect("stdout is piped"),
        "the driver's stdout",
    );
    let mut stderr = Lines::new(
        driver.child_mut().stderr.take().expect("stderr is piped"),
        "the driver's stderr",
    );
    stderr.wait_for(|l| l.contains("metrics on http://"), TIMEOUT, String::new);
    let ok = "llmsim_drive_requests_total{outcome=\"ok\"}";
    let during = scrape(&offline);
    assert!(
        during.contains("# TYPE http_client_request_duration_seconds histogram"),
        "{during}"
    );
    let summary_line = stdout.wait_for(|l| l.starts_with('{'), TIMEOUT, String::new);
    let summary: Value = serde_json::from_str(&summary_line).expect("the summary is JSON");
    let after = scrape(&offline);
    assert!(
        metric(&during, ok) <= metric(&after, ok),
        "{during}\n{after}"
    );
    assert_eq!(count(&summary, "requests"), 30, "{summary}");
    assert_eq!(
        metric(&after, ok),
        count(&summary, "ok"),
        "{after}\n{summary}"
    );
    assert_eq!(
        metric(&after, "http_client_request_duration_seconds_count"),
        count(&summary, "requests"),
        "{after}\n{summary}"
    );
    for outcome in ["difference", "connect", "timeout", "http"] {
        let name = format!("llmsim_drive_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&after, &name), 0, "{after}");
    }
    assert_eq!(metric(&after, "llmsim_drive_in_flight"), 0, "{after}");
    driver.signal("TERM");
}
