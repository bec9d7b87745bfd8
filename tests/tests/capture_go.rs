//! Go `crypto/tls` capture end to end: a client written with Go's standard library only
//! (`tests/clients/go`, built here with Debian's `golang-go`, offline) talks to the fake
//! provider through the `nghttpx` front end (TLS on loopback in a namespace of its own, the
//! test CA trusted through `SSL_CERT_FILE`, which Go reads), over HTTP/2 (ALPN) and over
//! HTTP/1.1 (`GODEBUG=http2client=0`), built with its symbols and stripped
//! (`-ldflags="-s -w"`, found through `.gopclntab`), started under `-- CMD` and already
//! running under `--pid`. Every capture: a plain and a streamed chat completion, bodies
//! byte-equal to what the provider received and sent and to what the client sent and read,
//! the SSE events complete and in order, no key on disk, the peer the front end, the Go probes
//! named in the summary; and the Go program itself ran correctly under the probes (its own
//! report is checked: a return probe would crash it). A captured Go client also replays
//! offline (`replayd -- CMD`, which Go trusts through `SSL_CERT_FILE`) to the same bytes.

mod capture_support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use capture_support::{
    Agent, Finished, StepClient, assert_bodies_as_exchanged, assert_keys_absent,
    assert_no_events_dropped, assert_paced_sse, exchanges, figure,
};
use llmsim_tests::{
    FakeProvider, H2_PORT, H2Front, TestCa, TestNetns,
    flows::{REPLAY_API_KEY, replayd_command},
    on_path, privileged, requires, run_command,
};
use serde_json::Value;

/// The Go client, built once per test run: with its symbols, and stripped.
struct GoClients {
    full: PathBuf,
    stripped: PathBuf,
}

/// Builds the Go client into the target's temporary directory, in a Go cache of its own that
/// is removed afterwards, with no network (no module is needed: standard library only).
fn go_clients() -> &'static GoClients {
    static CLIENTS: OnceLock<GoClients> = OnceLock::new();
    CLIENTS.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/go");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-client");
        let cache = tempfile::tempdir().expect("tempdir");
        let build = |name: &str, ldflags: &str| {
            let binary = out.join(name);
            let status = Command::new("go")
                .args(["build", "-trimpath", "-ldflags", ldflags, "-o"])
                .arg(&binary)
                .arg(".")
                .current_dir(&source)
                .env("GOCACHE", cache.path())
                .env("GOFLAGS", "-mod=mod")
                .env("GOPROXY", "off")
                .env("CGO_ENABLED", "0")
                .status()
                .expect("running go build");
            assert!(status.success(), "go build of {name} failed: {status}");
            binary
        };
        GoClients {
            full: build("llmsim-go-client", ""),
            stripped: build("llmsim-go-client-stripped", "-s -w"),
        }
    })
}

/// Whether the test `feature` can run: root, `nghttpx` and `go` installed.
fn runnable(feature: &str) -> bool {
    privileged(feature)
        && ["nghttpx", "go"].iter().all(|p| {
            requires(
                on_path(p),
                feature,
                &format!("needs {p} (scripts/setup.sh installs it)"),
            )
        })
}

/// Which HTTP version the client is made to speak.
#[derive(Clone, Copy, Debug)]
enum Version {
    Http11,
    Http2,
}

impl Version {
    /// `GODEBUG` for the client: HTTP/2 unless turned off.
    fn godebug(self) -> &'static str {
        match self {
            Self::Http11 => "http2client=0",
            Self::Http2 => "",
        }
    }

    /// As the client reports it (`resp.Proto`).
    fn proto(self) -> &'static str {
        match self {
            Self::Http11 => "HTTP/1.1",
            Self::Http2 => "HTTP/2.0",
        }
    }

    /// As the snapshot stores it: left out for HTTP/1.1.
    fn stored(self) -> Value {
        match self {
            Self::Http11 => Value::Null,
            Self::Http2 => Value::from("2"),
        }
    }
}

/// The fake provider behind the h2 front end, in a namespace of its own.
struct Setup {
    ca: TestCa,
    netns: TestNetns,
    provider: FakeProvider,
    _front: H2Front,
}

impl Setup {
    fn new() -> Self {
        let ca = TestCa::new();
        let netns = TestNetns::new();
        let provider = FakeProvider::start(&netns, &ca);
        let front = H2Front::start(&netns, &ca);
        Setup {
            ca,
            netns,
            provider,
            _front: front,
        }
    }

    /// `ip netns exec NAME CLIENT MODE ORIGIN`.
    fn client_argv(&self, client: &Path, mode: &str) -> Vec<OsString> {
        let mut argv = self.netns.exec_prefix();
        argv.push(client.into());
        argv.extend([mode, &H2Front::origin()].map(OsString::from));
        argv
    }

    /// Captures `CLIENT once ORIGIN` under `-- CMD`; the capture and the client's results.
    fn capture_command(&self, out: &Path, client: &Path, version: Version) -> (Finished, Value) {
        let mut args = vec![OsString::from("--")];
        args.extend(self.client_argv(client, "once"));
        let agent = Agent::spawn_with(out, &self.ca, &args, |cmd| {
            cmd.env("GODEBUG", version.godebug());
        });
        agent.wait_started();
        let finished = agent.finish();
        assert!(finished.status.success(), "{}", finished.dump());
        assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());
        let report = finished
            .command_stdout()
            .iter()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| panic!("no client report\n{}", finished.dump()));
        (finished, report["results"].clone())
    }

    /// Starts `CLIENT steps ORIGIN`, attaches a capture to it with `--pid`, has it make a plain
    /// and a streamed request, and ends it; the capture and the client's results.
    fn capture_pid(&self, out: &Path, client: &Path, version: Version) -> (Finished, Value) {
        let argv = self.client_argv(client, "steps");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("GODEBUG", version.godebug());
        let mut steps = StepClient::start(cmd, &self.ca);
        let pid = steps.pid;
        let agent = Agent::start(out, &self.ca, &["--pid".into(), pid.to_string().into()]);
        let results = Value::Array(vec![steps.step("plain"), steps.step("stream")]);
        // Both are whole (a body of known length, the stream's end) while the client runs.
        agent.wait_live_lines(2);
        steps.quit();
        let finished = agent.finish();
        assert!(finished.status.success(), "{}", finished.dump());
        for exchange in exchanges(out) {
            assert_eq!(exchange["process"]["pid"], pid, "{exchange:#}");
        }
        (finished, results)
    }

    /// Every check on one capture of a plain and a streamed chat completion.
    fn assert_captured(&self, out: &Path, finished: &Finished, results: &Value, version: Version) {
        let results = results.as_array().expect("results");
        assert_eq!(results.len(), 2, "{results:?}");
        for result in results {
            assert!(
                result.get("error").is_none(),
                "the Go client failed: {result}"
            );
            assert_eq!(result["http_version"], version.proto(), "{result}");
        }
        let recorded = exchanges(out);
        assert_eq!(recorded.len(), 2, "{}", finished.dump());
        let served = self.provider.requests();
        assert_eq!(served.len(), 2);
        for (i, exchange) in recorded.iter().enumerate() {
            assert_eq!(exchange["http_version"], version.stored(), "{exchange:#}");
            assert_eq!(exchange["provider"], "openai");
            assert_eq!(exchange["host"], "api.openai.com");
            assert_eq!(exchange["request"]["method"], "POST");
            assert_eq!(exchange["request"]["path"], "/v1/chat/completions");
            assert_eq!(exchange["response"]["status"], 200);
            assert!(exchange["incomplete"].is_null(), "{exchange:#}");
            // The socket behind the `*tls.Conn`, found through its `net.Conn`: the front end.
            let peer = exchange["peer"].as_str().unwrap_or_default();
            assert!(
                peer.ends_with(&format!(":{H2_PORT}")),
                "peer {peer:?} is not the front end"
            );
            assert_bodies_as_exchanged(i, exchange, &results[i], &served[i]);
            assert_eq!(exchange["streamed"], i == 1);
        }
        assert_paced_sse(&recorded[1]);
        assert_keys_absent(out);
        assert_eq!(figure(&finished.summary, "exchanges_incomplete"), 0);
        assert_no_events_dropped(finished);
        let probes = finished.summary["probes"].as_array().expect("probes");
        let go = probes
            .iter()
            .find(|p| p["placement"] == "go")
            .unwrap_or_else(|| panic!("no Go probes in the summary\n{}", finished.dump()));
        let description = go["description"].as_str().expect("description");
        assert!(
            description.starts_with("go probes (entries on emulated jcc + ")
                && description.ends_with(" ret probes, single-step)"),
            "{description}"
        );
    }
}

/// Captures the Go client built `which` way under `-- CMD`, speaking `version`.
fn command_case(feature: &str, which: fn(&GoClients) -> &Path, version: Version) {
    if !runnable(feature) {
        return;
    }
    let client = which(go_clients());
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, results) = setup.capture_command(out.path(), client, version);
    setup.assert_captured(out.path(), &finished, &results, version);
}

/// Captures the Go client built `which` way under `--pid`, speaking `version`.
fn pid_case(feature: &str, which: fn(&GoClients) -> &Path, version: Version) {
    if !runnable(feature) {
        return;
    }
    let client = which(go_clients());
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, results) = setup.capture_pid(out.path(), client, version);
    setup.assert_captured(out.path(), &finished, &results, version);
}

fn full(clients: &GoClients) -> &Path {
    &clients.full
}

fn stripped(clients: &GoClients) -> &Path {
    &clients.stripped
}

#[test]
fn a_go_command_over_h2_is_captured() {
    command_case("Go capture over h2", full, Version::Http2);
}

#[test]
fn a_go_command_over_http1_is_captured() {
    command_case("Go capture over HTTP/1.1", full, Version::Http11);
}

#[test]
fn a_stripped_go_command_over_h2_is_captured() {
    command_case("stripped Go capture over h2", stripped, Version::Http2);
}

#[test]
fn a_stripped_go_command_over_http1_is_captured() {
    command_case(
        "stripped Go capture over HTTP/1.1",
        stripped,
        Version::Http11,
    );
}

#[test]
fn a_running_go_process_over_h2_is_captured_with_pid() {
    pid_case("Go capture --pid over h2", full, Version::Http2);
}

#[test]
fn a_running_stripped_go_process_over_http1_is_captured_with_pid() {
    pid_case(
        "stripped Go capture --pid over HTTP/1.1",
        stripped,
        Version::Http11,
    );
}

#[test]
fn a_captured_go_client_replays_offline_to_the_same_bytes() {
    if !runnable("Go capture and replay over h2") {
        return;
    }
    let client = &go_clients().stripped;
    let setup = Setup::new();
    let out = tempfile::tempdir().expect("tempdir");
    let (finished, captured) = setup.capture_command(out.path(), client, Version::Http2);
    setup.assert_captured(out.path(), &finished, &captured, Version::Http2);
    // A fresh namespace with no provider and no front end: only replayd answers.
    let offline = TestNetns::offline();
    let argv = [
        client.into(),
        OsString::from("once"),
        OsString::from(H2Front::origin()),
    ];
    let mut cmd = replayd_command(&offline, out.path(), argv);
    cmd.env(REPLAY_API_KEY.0, REPLAY_API_KEY.1);
    let output = run_command(cmd, "replay of the Go client", Duration::from_secs(120));
    assert!(output.status.success(), "{output}");
    let replayed = output
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no client report from the replay\n{output}"));
    let replayed = replayed["results"].as_array().expect("results");
    let captured = captured.as_array().expect("results");
    assert_eq!(replayed.len(), captured.len());
    for (got, recorded) in replayed.iter().zip(captured) {
        assert!(got.get("error").is_none(), "{got}");
        assert_eq!(got["http_version"], Version::Http2.proto(), "{got}");
        assert_eq!(got["sent"], recorded["sent"]);
        assert_eq!(got["received"], recorded["received"], "the same bytes");
    }
}
