//! Whole flows that several end-to-end tests share: recording a client into a
//! snapshot, and the command that replays a snapshot to a client in an offline
//! namespace.

use std::{
    ffi::{OsStr, OsString},
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{
    ClientRun, CommandOutput, FakeProvider, ProviderRequest, TestCa, TestNetns, client_argv,
    configure_client_env, llmsim_agent, netns_client_argv, replayd, run_command,
};

const TIMEOUT: Duration = Duration::from_secs(180);
/// A client run through replayd: a JVM or a runtime starting cold takes a while.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// The key replayed clients get: the SDKs refuse to start without one, and
/// replay needs no real one.
pub const REPLAY_API_KEY: (&str, &str) = ("OPENAI_API_KEY", "sk-replay-needs-no-key");

/// `replayd --in SNAPSHOT --on-miss record --as-root -- ARGV`, run in `netns` beside its
/// fake provider. The app gets a hosts file of its own naming only localhost (written in
/// `data`), so its lookups go to replayd's DNS, not to the namespace's hosts file, which
/// names the fake provider. replayd's own forwards trust `ca`, and its state lives in
/// `data`.
pub fn replayd_recording_command(
    netns: &TestNetns,
    ca: &TestCa,
    snapshot: &Path,
    data: &Path,
    argv: &[OsString],
) -> Command {
    let hosts = data.join("hosts");
    std::fs::write(&hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost\n").expect("write hosts");
    let mut cmd = netns.command(replayd());
    cmd.arg("--in")
        .arg(snapshot)
        .args(["--on-miss", "record", "--as-root", "--"])
        .args(["unshare", "-m", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(&hosts)
        .args(argv);
    cmd.env("SSL_CERT_FILE", ca.bundle_path())
        .env("XDG_DATA_HOME", data);
    cmd
}

/// What [`record_then_replay_through_replayd`] saw: both runs' output.
pub struct RecordedAndReplayed {
    /// `replayd --on-miss record -- CLIENT` against the fake provider.
    pub recorded: CommandOutput,
    /// `replayd -- CLIENT` offline, from that recording.
    pub replayed: CommandOutput,
}

/// For clients capture cannot record: `client` records its two chat completions (plain and
/// streamed) through `replayd --on-miss record` from a fake provider, with a key holding
/// `secret`, `env` and without the machine's values of `scrubbed` (so its trust comes from
/// replayd alone), then
/// replays them offline with the default `--on-miss fail`. Checks what every such client
/// must give: both calls reached the provider with the key as sent, two exchanges recorded
/// without the key, and the replayed output byte for byte the recorded one with 2 served and
/// 0 misses. The caller checks what the client printed.
pub fn record_then_replay_through_replayd(
    client: &[OsString],
    secret: &str,
    env: &[(&str, &str)],
    scrubbed: &[&str],
) -> RecordedAndReplayed {
    let api_key = format!("sk-proj-{secret}0123456789abcdef");
    let what = client
        .iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let snapshot = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");

    // The app must reach replayd, not the fake provider.
    let mut cmd = replayd_recording_command(&netns, &ca, snapshot.path(), data.path(), client);
    cmd.env("OPENAI_API_KEY", &api_key)
        .envs(env.iter().copied())
        .env_remove("OPENAI_BASE_URL");
    for name in scrubbed {
        cmd.env_remove(name);
    }
    let recorded = run_command(
        cmd,
        &format!("replayd --on-miss record -- {what}"),
        RUN_TIMEOUT,
    );
    assert!(recorded.status.success(), "record run failed:\n{recorded}");
    let requests = provider.requests();
    assert_eq!(requests.len(), 2, "both calls reached the provider");
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {api_key}").as_str()),
            "the key is forwarded as sent"
        );
    }
    assert!(
        recorded
            .stderr
            .contains("passed through 2 requests to the real API (2 recorded)"),
        "report:\n{recorded}"
    );
    let files = crate::snapshot::exchange_paths(snapshot.path());
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read an exchange file");
        assert!(
            !text.contains(secret),
            "the key leaked into {}",
            file.display()
        );
    }
    drop(provider);

    let offline = TestNetns::offline();
    let mut cmd = replayd_command(&offline, snapshot.path(), client);
    cmd.env("XDG_DATA_HOME", data.path())
        .env("OPENAI_API_KEY", "sk-replay-needs-no-key")
        .envs(env.iter().copied())
        .env_remove("OPENAI_BASE_URL");
    for name in scrubbed {
        cmd.env_remove(name);
    }
    let replayed = run_command(cmd, &format!("offline replayd -- {what}"), RUN_TIMEOUT);
    assert!(replayed.status.success(), "replay failed:\n{replayed}");
    assert_eq!(
        replayed.stdout, recorded.stdout,
        "the replayed answers are the recorded bytes"
    );
    assert!(
        replayed.stderr.contains("served 2 requests"),
        "report:\n{replayed}"
    );
    assert!(replayed.stderr.contains(" 0 misses"), "report:\n{replayed}");
    RecordedAndReplayed { recorded, replayed }
}

/// Records `client` into `out` with `llmsim-agent capture`, against a fake
/// provider in a fresh namespace; returns the answers the client reported.
pub fn record(client: &str, out: &Path) -> Vec<String> {
    let run = ClientRun::finish(record_with_input(client, "", out));
    run.texts().into_iter().map(str::to_owned).collect()
}

/// [`record`] for a client that reads `input` on standard input; returns what
/// the capture printed.
pub fn record_with_input(client: &str, input: &str, out: &Path) -> CommandOutput {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _provider = FakeProvider::start(&netns, &ca);
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture")
        .arg("--out")
        .arg(out)
        .arg("--")
        .args(netns.exec_prefix());
    // `printf` feeds the input; the client runs as the pipeline's last command.
    cmd.args(["sh", "-c", "printf %s \"$0\" | \"$@\"", input])
        .args(client_argv(client));
    configure_client_env(&mut cmd, &ca);
    let output = run_command(cmd, &format!("capture of {client}"), TIMEOUT);
    assert!(output.status.success(), "{output}");
    output
}

/// `replayd --in snapshot -- <client>` inside `offline`, with no CA settings
/// (replay provides its own) and a dummy key.
pub fn replay_command(offline: &TestNetns, snapshot: &Path, client: &str) -> Command {
    let mut cmd = replayd_command(offline, snapshot, client_argv(client));
    cmd.env(REPLAY_API_KEY.0, REPLAY_API_KEY.1)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// `replayd --in snapshot -- <argv>` inside `netns`, with no CA settings: replay provides
/// its own, as it would on a CI runner.
pub fn replayd_command(
    netns: &TestNetns,
    snapshot: &Path,
    argv: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> Command {
    let mut cmd = netns.command(replayd());
    cmd.arg("--in").arg(snapshot).arg("--").args(argv);
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

/// Dummy keys for every SDK a replayed client may use: the SDKs refuse to start
/// without one, and replay needs no real one.
pub const REPLAY_API_KEYS: &[(&str, &str)] = &[
    REPLAY_API_KEY,
    ("ANTHROPIC_API_KEY", "sk-ant-replay-needs-no-key"),
    ("GEMINI_API_KEY", "replay-needs-no-key"),
    ("XAI_API_KEY", "xai-replay-needs-no-key"),
];

/// Variables a replayed client must not inherit: CA settings (replay provides
/// its own trust), proxies, base-URL overrides and competing credentials.
const REPLAY_SCRUBBED_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_API_KEY",
    "GOOGLE_GENAI_USE_VERTEXAI",
];

/// A client recorded by [`record_client`].
pub struct Recording {
    /// The client's run under capture: its report on stdout, the capture summary
    /// on stderr.
    pub run: ClientRun,
    /// Every request the fake provider served during the capture, in order.
    pub served: Vec<ProviderRequest>,
}

/// Records `client` (with `env` added to its environment) into `out` with
/// `llmsim-agent capture`, against a fake provider in a fresh namespace; returns
/// the client's run and what the provider served.
pub fn record_client(client: &str, env: &[(&str, &str)], out: &Path) -> Recording {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture")
        .arg("--out")
        .arg(out)
        .arg("--")
        .args(netns_client_argv(&netns, client));
    configure_client_env(&mut cmd, &ca);
    cmd.envs(env.iter().copied());
    let output = run_command(cmd, &format!("capture of {client}"), TIMEOUT);
    let run = ClientRun::finish(output);
    Recording {
        run,
        served: provider.requests(),
    }
}

/// Runs `replayd --in snapshot ARGS -- <client>` in a fresh offline namespace,
/// with no CA settings (replay provides its own), [`REPLAY_API_KEYS`] and `env`;
/// returns its output whatever the exit status.
pub fn replay_client(
    snapshot: &Path,
    replayd_args: &[&str],
    client: &str,
    env: &[(&str, &str)],
) -> CommandOutput {
    let offline = TestNetns::offline();
    let mut cmd = offline.command(replayd());
    cmd.arg("--in")
        .arg(snapshot)
        .args(replayd_args)
        .arg("--")
        .args(client_argv(client));
    for name in REPLAY_SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    cmd.envs(REPLAY_API_KEYS.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied());
    run_command(cmd, &format!("replay of {client}"), TIMEOUT)
}

/// Test prices in $ per million tokens, (input, output), for [`REPORT_PRICES`]:
/// distinct from the built-in table, so a cost can be checked by arithmetic.
pub const TEST_PRICE_PER_MILLION: (f64, f64) = (1.5, 6.5);

/// A `--prices` file giving the models the test clients use the
/// [`TEST_PRICE_PER_MILLION`] rates.
pub const REPORT_PRICES: &str = r#"as_of = 2025-01-01

[[model]]
provider = "openai"
model = "gpt-4o-mini"
input = 1.5
output = 6.5

[[model]]
provider = "anthropic"
model = "claude-haiku-4-5"
input = 1.5
output = 6.5

[[model]]
provider = "gemini"
model = "gemini-2.5-flash"
input = 1.5
output = 6.5
"#;

/// Checks `llmsim-agent report --json dir` against what the fake provider says
/// it served: one call per request, in order, with the provider's input and
/// output token counts, the streamed flag, a time to first token, and (under the
/// [`REPORT_PRICES`] price file) exactly the cost those counts make; totals are
/// the sums; under the built-in prices every call is priced. Returns the report
/// made with the built-in prices.
pub fn assert_report_matches_provider(
    dir: &Path,
    served: &[ProviderRequest],
    provider_name: &str,
) -> Value {
    let price_file = tempfile::NamedTempFile::new().expect("temporary prices file");
    std::fs::write(price_file.path(), REPORT_PRICES).expect("write the prices file");
    let report = |extra: &[&std::ffi::OsStr]| -> Value {
        let mut cmd = Command::new(llmsim_agent());
        cmd.args(["report", "--json"]).args(extra).arg(dir);
        let output = run_command(cmd, "llmsim-agent report --json", TIMEOUT);
        output.assert_success();
        output.json()
    };
    let priced = report(&["--prices".as_ref(), price_file.path().as_os_str()]);
    let builtin = report(&[]);

    let calls = priced["calls"].as_array().expect("calls");
    assert_eq!(
        calls.len(),
        served.len(),
        "one call per request served:\n{priced:#}"
    );
    let (rate_in, rate_out) = TEST_PRICE_PER_MILLION;
    let (mut input, mut output, mut cost) = (0, 0, 0.0);
    for (call, request) in calls.iter().zip(served) {
        let usage = request
            .usage
            .as_ref()
            .unwrap_or_else(|| panic!("the provider logged no usage for {}", request.path));
        let at = format!(
            "call {} ({} stream={})",
            call["seq"], request.path, request.stream
        );
        assert_eq!(call["provider"], provider_name, "{at}: {call:#}");
        assert_eq!(call["status"], 200, "{at}: {call:#}");
        assert_eq!(call["streamed"], request.stream, "{at}: {call:#}");
        assert_eq!(
            call["usage"]["input_tokens"], usage.input_tokens,
            "{at}: {call:#}"
        );
        assert_eq!(
            call["usage"]["output_tokens"], usage.output_tokens,
            "{at}: {call:#}"
        );
        assert!(
            call["ttft_ms"].as_f64().is_some_and(|t| t > 0.0),
            "{at}: no time to first token: {call:#}"
        );
        #[expect(clippy::cast_precision_loss, reason = "token counts in tests are tiny")]
        let expected =
            (usage.input_tokens as f64 * rate_in + usage.output_tokens as f64 * rate_out) / 1e6;
        let call_cost = call["cost_usd"]
            .as_f64()
            .unwrap_or_else(|| panic!("{at}: unpriced: {call:#}"));
        assert!(
            (call_cost - expected).abs() < 1e-12,
            "{at}: cost {call_cost}, expected {expected} from the provider's usage"
        );
        input += usage.input_tokens;
        output += usage.output_tokens;
        cost += expected;
    }
    let total = &priced["total"];
    assert_eq!(total["calls"], served.len(), "{total:#}");
    assert_eq!(total["usage"]["input_tokens"], input, "{total:#}");
    assert_eq!(total["usage"]["output_tokens"], output, "{total:#}");
    assert_eq!(total["unpriced"], 0, "{total:#}");
    let total_cost = total["cost_usd"].as_f64().expect("total cost");
    assert!(
        (total_cost - cost).abs() < 1e-12,
        "total cost {total_cost}, expected {cost}:\n{total:#}"
    );

    let total = &builtin["total"];
    assert_eq!(total["usage"]["input_tokens"], input, "{total:#}");
    assert_eq!(total["usage"]["output_tokens"], output, "{total:#}");
    assert_eq!(total["unpriced"], 0, "built-in prices:\n{total:#}");
    assert!(
        total["cost_usd"].as_f64().is_some_and(|c| c > 0.0),
        "built-in prices:\n{total:#}"
    );
    builtin
}
