//! Inbound capture (`--app-port`): the support-ticket triage demo served as an HTTP API
//! (`examples/triage/app.py --serve`, stdlib `ThreadingHTTPServer`, one thread per request,
//! the official openai, anthropic and google-genai SDKs on the request's thread) runs under
//! the agent against the fake provider; a client posts three tickets, the last two at once.
//! Each request the app served is one inbound exchange whose bodies are byte for byte what the
//! client sent and received, linked to exactly the nine outbound calls (three steps, three
//! providers) made for its ticket, told apart by the prompts they carry. No key reaches the
//! snapshot and no kernel event is dropped. Over plain HTTP (the socket syscalls) and over TLS
//! (Python's `ssl`: OpenSSL's server-side `SSL_read_ex`/`SSL_write_ex`); and replayd serves the
//! outbound calls of that snapshot to the batch app and leaves the inbound ones alone. The
//! captured snapshot is then the regression test the product promises: `replayd --drive`
//! replays its inbound requests to the app under replay with no difference, and to a copy of
//! the app with one prompt edited, where it prints the difference and exits 1.

mod capture_support;

use std::{collections::BTreeMap, ffi::OsString, path::Path, time::Duration};

use capture_support::{
    Agent, Finished, TIMEOUT, assert_keys_absent, assert_no_events_dropped, exchange_files, figure,
    is_live_line,
};
use llmsim_snapshot::model::Exchange;
use llmsim_tests::{
    FakeProvider, TestCa, TestNetns, client_argv, flows::REPLAY_API_KEYS, privileged, replayd,
    repo_root, run_command,
};
use serde_json::Value;

/// Where the app serves, inside the test's own network namespace, where nothing else listens.
const APP_HOST: &str = "127.0.0.1";
const APP_PORT: &str = "8080";
/// The providers the app calls, each three times per ticket.
const PROVIDERS: &str = "openai,anthropic,gemini";
const CALLS_PER_TICKET: usize = 9;
/// Tickets posted: the first alone, the others at once.
const TICKETS: usize = 3;

/// One ticket as the client posted it.
struct Posted {
    id: String,
    status: u64,
    sent: Vec<u8>,
    received: Vec<u8>,
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Captures the app serving on `--app-port` (over TLS with the test leaf when `tls`) while the
/// client posts the tickets; stops the capture once the three inbound exchanges are written.
fn capture(netns: &TestNetns, ca: &TestCa, out: &Path, tls: bool) -> (Finished, Vec<Posted>) {
    let app = repo_root().join("examples/triage/app.py");
    let mut args: Vec<OsString> = vec!["--app-port".into(), APP_PORT.into(), "--".into()];
    args.extend(netns.exec_prefix());
    args.extend(["python3".into(), app.into_os_string()]);
    args.extend(["--providers", PROVIDERS, "--serve"].map(OsString::from));
    args.push(format!("{APP_HOST}:{APP_PORT}").into());
    if tls {
        args.extend([
            "--tls-cert".into(),
            ca.leaf_cert_path().into_os_string(),
            "--tls-key".into(),
            ca.leaf_key_path().into_os_string(),
        ]);
    }
    let agent = Agent::spawn_with(out, ca, &args, |_| {});
    agent.wait_started();
    let stdout = agent.stdout.clone();
    agent.stderr.wait_for(
        |l| l.starts_with("triage: serving on"),
        TIMEOUT,
        move || format!("--- agent stdout ---\n{}", stdout.text()),
    );

    let scheme = if tls { "https" } else { "http" };
    let script = client_argv("triage_post.py");
    let mut client = netns.command(&script[0]);
    client
        .args(&script[1..])
        .arg(format!("{scheme}://{APP_HOST}:{APP_PORT}"))
        .arg(repo_root().join("examples/triage/tickets.json"))
        .arg(TICKETS.to_string())
        .arg(ca.ca_cert_path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(client, "triage client", Duration::from_secs(120));
    output.assert_success();
    let posted: Vec<Posted> = output
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| Posted {
            id: r["id"].as_str().expect("id").to_owned(),
            status: r["status"].as_u64().expect("status"),
            sent: unhex(r["sent"].as_str().expect("sent")),
            received: unhex(r["received"].as_str().expect("received")),
        })
        .collect();

    let stdout = agent.stdout.clone();
    agent.stderr.wait_for_nth(
        TICKETS,
        |l| l.starts_with("inbound ") && is_live_line(l),
        TIMEOUT,
        move || format!("--- agent stdout ---\n{}", stdout.text()),
    );
    (agent.stop("INT"), posted)
}

/// Every string in a JSON document, joined: the prompts of a request body.
fn strings(value: &Value, into: &mut String) {
    match value {
        Value::String(s) => {
            into.push_str(s);
            into.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|v| strings(v, into)),
        Value::Object(fields) => fields.values().for_each(|v| strings(v, into)),
        _ => {}
    }
}

/// The seqs of the outbound exchanges whose prompts carry ticket `id`, checked to be three
/// per provider.
fn calls_for(outbound: &[&(String, Exchange)], id: &str) -> Vec<u64> {
    let marker = format!("Ticket {id} from");
    let mut seqs = Vec::new();
    let mut providers = BTreeMap::new();
    for (_, call) in outbound {
        let body: Value =
            serde_json::from_slice(&call.request.body.to_bytes()).expect("a JSON request");
        let mut prompts = String::new();
        strings(&body, &mut prompts);
        if prompts.contains(&marker) {
            seqs.push(call.seq);
            *providers.entry(call.provider.to_string()).or_insert(0) += 1;
        }
    }
    assert_eq!(seqs.len(), CALLS_PER_TICKET, "calls for {id}");
    assert_eq!(
        providers,
        BTreeMap::from([
            ("anthropic".to_owned(), 3),
            ("gemini".to_owned(), 3),
            ("openai".to_owned(), 3)
        ]),
        "calls for {id}"
    );
    seqs
}

/// Checks the snapshot in `out` against what the client posted.
fn check(out: &Path, finished: &Finished, posted: &[Posted]) {
    let dump = finished.dump();
    assert_eq!(posted.len(), TICKETS);
    assert_no_events_dropped(finished);
    let summary = &finished.summary;
    assert_eq!(figure(summary, "exchanges_incomplete"), 0, "{dump}");
    assert_eq!(
        figure(summary, "exchanges_written"),
        (TICKETS * (CALLS_PER_TICKET + 1)) as u64,
        "{dump}"
    );
    assert_eq!(
        figure(summary, "inbound_exchanges_written"),
        TICKETS as u64,
        "{dump}"
    );
    assert_eq!(
        figure(&summary["connections"], "inbound_connections"),
        TICKETS as u64,
        "{dump}"
    );
    assert_keys_absent(out);

    let files = exchange_files(out);
    let exchanges: Vec<(String, Exchange)> = files
        .iter()
        .map(|(path, value)| {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (
                name,
                serde_json::from_value(value.clone()).expect("an exchange"),
            )
        })
        .collect();
    let (inbound, outbound): (Vec<_>, Vec<_>) = exchanges
        .iter()
        .partition(|(_, e)| e.direction == llmsim_snapshot::model::Direction::Inbound);
    assert_eq!(inbound.len(), TICKETS, "{dump}");
    assert_eq!(outbound.len(), TICKETS * CALLS_PER_TICKET, "{dump}");
    for (name, exchange) in &outbound {
        assert!(exchange.linked.is_empty(), "{name} links nothing");
    }

    for ticket in posted {
        assert_eq!(ticket.status, 200, "ticket {}", ticket.id);
        let served: Vec<_> = inbound
            .iter()
            .filter(|(_, e)| e.request.body.to_bytes() == ticket.sent)
            .collect();
        assert_eq!(
            served.len(),
            1,
            "one inbound exchange for ticket {}",
            ticket.id
        );
        let (name, exchange) = served[0];
        assert!(
            name.ends_with("-inbound-post-triage.json"),
            "inbound file name {name}"
        );
        assert_eq!(
            (
                exchange.request.method.as_str(),
                exchange.request.path.as_str()
            ),
            ("POST", "/triage")
        );
        assert_eq!(u64::from(exchange.response.status), ticket.status, "{name}");
        assert!(
            exchange.response.body.to_bytes() == ticket.received,
            "{name}: the recorded response body differs from what the client received\nrecorded: {}\nreceived: {}",
            String::from_utf8_lossy(&exchange.response.body.to_bytes()),
            String::from_utf8_lossy(&ticket.received)
        );
        assert!(exchange.incomplete.is_none(), "{name}");

        let expected = calls_for(&outbound, &ticket.id);
        assert_eq!(
            exchange.linked, expected,
            "{name} links exactly the calls made for ticket {}",
            ticket.id
        );
        assert!(
            expected.iter().all(|&seq| seq < exchange.seq),
            "{name} is written after the calls it links"
        );
    }
}

/// `replayd --in SNAPSHOT --drive URL -- python3 APP --serve`: the captured requests sent to
/// `app` under replay of the captured calls.
fn drive_captured(snapshot: &Path, app: &Path) -> llmsim_tests::CommandOutput {
    let offline = TestNetns::offline();
    let url = format!("http://{APP_HOST}:{APP_PORT}");
    let mut cmd = offline.command(replayd());
    cmd.arg("--in")
        .arg(snapshot)
        .args(["--pace", "instant", "--drive", &url, "--"])
        .arg("python3")
        .arg(app)
        .args(["--providers", PROVIDERS, "--serve"])
        .arg(format!("{APP_HOST}:{APP_PORT}"));
    cmd.envs(REPLAY_API_KEYS.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_command(cmd, "replayd --drive of the captured snapshot", TIMEOUT)
}

/// The captured snapshot as a regression test: the unchanged app answers as recorded (its
/// timing field ignored through `[compare]`), and one edited prompt is a difference, exit 1.
fn assert_regression_replay(snapshot: &Path) {
    std::fs::write(
        snapshot.join("llmsim.toml"),
        "[compare]\njson_pointers = [\"/elapsed_ms\"]\n",
    )
    .expect("llmsim.toml");
    let app = repo_root().join("examples/triage/app.py");
    let output = drive_captured(snapshot, &app);
    assert_eq!(output.status.code(), Some(0), "{output}");
    let expected = format!("{TICKETS} as recorded, 0 differing, 0 errors");
    assert!(output.stdout.contains(&expected), "{output}");

    let edited = tempfile::tempdir().expect("tempdir");
    let source = std::fs::read_to_string(&app).expect("app.py");
    let prompt = "in at most 80 words";
    assert!(source.contains(prompt), "app.py no longer says {prompt:?}");
    let edited_app = edited.path().join("app.py");
    std::fs::write(&edited_app, source.replace(prompt, "in at most 60 words")).expect("app.py");
    std::fs::copy(
        repo_root().join("examples/triage/tickets.json"),
        edited.path().join("tickets.json"),
    )
    .expect("tickets.json");
    let output = drive_captured(snapshot, &edited_app);
    assert_eq!(output.status.code(), Some(1), "{output}");
    for expected in [
        "  status\n    - 200\n    + 502\n".to_owned(),
        "  body /results/openai\n".to_owned(),
        format!("0 as recorded, {TICKETS} differing, 0 errors"),
    ] {
        assert!(
            output.stdout.contains(&expected),
            "no {expected:?} in\n{output}"
        );
    }
}

#[test]
fn requests_served_over_plain_http_are_recorded_inbound_and_linked_and_replay_as_a_regression_test()
{
    if !privileged("inbound capture of an app served over plain HTTP") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, posted) = capture(&netns, &ca, out.path(), false);
    check(out.path(), &finished, &posted);

    // replayd serves the outbound calls of this snapshot (the same calls, made by the app in
    // batch mode) and never the inbound ones.
    let offline = TestNetns::offline();
    let mut cmd = offline.command(replayd());
    cmd.arg("--in")
        .arg(out.path())
        .arg("--")
        .arg("python3")
        .arg(repo_root().join("examples/triage/app.py"))
        .args(["--providers", PROVIDERS, "--limit"])
        .arg(TICKETS.to_string())
        .arg("--no-timings");
    cmd.envs(REPLAY_API_KEYS.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(
        cmd,
        "replay of the captured calls",
        Duration::from_secs(300),
    );
    assert!(output.status.success(), "{output}");
    let served = format!(
        "served {} requests (0 repeats), 0 misses",
        TICKETS * CALLS_PER_TICKET
    );
    assert!(output.stderr.contains(&served), "{output}");

    assert_regression_replay(out.path());
}

#[test]
fn requests_served_over_tls_are_recorded_inbound_and_linked() {
    if !privileged("inbound capture of an app served over TLS") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, posted) = capture(&netns, &ca, out.path(), true);
    check(out.path(), &finished, &posted);
}
