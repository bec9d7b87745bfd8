//! Running the client programs in `tests/clients` (ordinary apps using the official SDKs, which
//! know nothing about llmsim) with the test CA trusted, test API keys, and no proxy or base-URL
//! settings leaking in from the caller's environment; and parsing the JSON report each prints:
//! `{"client", "sdk", "sdk_version", "results": [{"call", "stream", "id", "text", "usage", ...}]}`.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::ca::TestCa;
use crate::netns::TestNetns;
use crate::paths::{client_script, ensure_node_client, npm_bin};
use crate::privilege::{privileged, requires};
use crate::process::{CommandOutput, run_command};
use crate::provider::{FakeProvider, Usage};

/// `node_fetch.mjs` run by the JavaScript runtime `name` that npm installs (`bun`, `deno`),
/// with `args` before the script, for a privileged test `what`; None when the test is
/// skipped (not root, or the runtime is not installed; under `CI=true` a skip fails).
pub fn js_runtime_fetch(name: &str, args: &[&str], what: &str) -> Option<Vec<OsString>> {
    let runnable = privileged(what)
        && requires(
            npm_bin(name).is_file(),
            what,
            &format!(
                "tests/clients/node_modules/.bin/{name} is missing (scripts/setup.sh runs npm ci)"
            ),
        );
    runnable.then(|| {
        std::iter::once(npm_bin(name).into_os_string())
            .chain(args.iter().map(OsString::from))
            .chain(std::iter::once(
                client_script("node_fetch.mjs").into_os_string(),
            ))
            .collect()
    })
}

/// How long a client run may take before it is killed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The API keys clients get: obvious test values, never real-looking secrets.
pub const TEST_API_KEYS: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "sk-test-llmsim-openai-key"),
    ("ANTHROPIC_API_KEY", "sk-ant-test-llmsim-anthropic-key"),
    ("GEMINI_API_KEY", "test-llmsim-gemini-key"),
    ("XAI_API_KEY", "xai-test-llmsim-key"),
    ("OPENROUTER_API_KEY", "sk-or-test-llmsim-key"),
];

/// Variables removed from a client's environment: proxies (which would send traffic elsewhere),
/// base-URL overrides, and credentials that would compete with the test keys.
const SCRUBBED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_ADMIN_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "NODE_OPTIONS",
];

/// The interpreter and script for a client in `tests/clients`: `python3 <path>` for `.py`,
/// `node <path>` for `.mjs`/`.js` (after checking the Node dependencies are installed).
pub fn client_argv(script: &str) -> Vec<OsString> {
    let path = client_script(script);
    let interpreter = match path.extension().and_then(|e| e.to_str()) {
        Some("py") => "python3",
        Some("mjs" | "js") => {
            ensure_node_client();
            "node"
        }
        _ => panic!("don't know how to run client {script}: expected a .py or .mjs file"),
    };
    vec![OsString::from(interpreter), path.into_os_string()]
}

/// One command running the clients `scripts` one after the other, stopping at the first
/// that fails: `sh -c '"$0" "$1" && "$2" "$3" ...' python3 <path> ...`.
pub fn clients_argv(scripts: &[&str]) -> Vec<OsString> {
    let argvs: Vec<Vec<OsString>> = scripts.iter().map(|s| client_argv(s)).collect();
    let mut next = 0;
    let line: Vec<String> = argvs
        .iter()
        .map(|argv| {
            let words: Vec<String> = (next..next + argv.len())
                .map(|i| format!("\"${i}\""))
                .collect();
            next += argv.len();
            words.join(" ")
        })
        .collect();
    let mut out = vec![OsString::from("sh"), "-c".into(), line.join(" && ").into()];
    out.extend(argvs.into_iter().flatten());
    out
}

/// The full argument vector running `script` inside `netns`: `ip netns exec <name> python3
/// <path>`. Wrap it in the program under test and apply [`configure_client_env`], e.g.
/// `llmsim-agent capture -- ip netns exec <name> python3 .../openai_chat.py`.
pub fn netns_client_argv(netns: &TestNetns, script: &str) -> Vec<OsString> {
    let mut argv = netns.exec_prefix();
    argv.extend(client_argv(script));
    argv
}

/// Sets a client's environment: the CA variables of [`TestCa::client_env`], the
/// [`TEST_API_KEYS`], `PYTHONDONTWRITEBYTECODE=1`, and removes proxies, base-URL overrides and
/// competing credentials. Works for any command that ends up running the client, e.g.
/// `llmsim-agent capture -- ip netns exec NAME python3 client.py`.
pub fn configure_client_env(cmd: &mut Command, ca: &TestCa) {
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    cmd.envs(ca.client_env());
    cmd.envs(TEST_API_KEYS.iter().copied());
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
}

/// A command running `script` inside `netns` with [`configure_client_env`] applied: the client
/// reaches the real provider host names, which resolve to the namespace's loopback.
pub fn client_command(netns: &TestNetns, ca: &TestCa, script: &str) -> Command {
    let argv = client_argv(script);
    let mut cmd = netns.command(&argv[0]);
    cmd.args(&argv[1..]);
    configure_client_env(&mut cmd, ca);
    cmd
}

/// Runs `script` inside `netns` (see [`client_command`]); panics with its output unless it exits
/// 0 and prints a JSON report.
pub fn run_client(netns: &TestNetns, ca: &TestCa, script: &str) -> ClientRun {
    let what = format!("client {script} in network namespace {}", netns.name());
    ClientRun::finish(run_command(
        client_command(netns, ca, script),
        &what,
        CLIENT_TIMEOUT,
    ))
}

/// Runs `script` in the current network namespace against a provider started with
/// [`FakeProvider::start_on_loopback`], pointing the SDKs at it with their ordinary base-URL
/// variables (`OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`, `GOOGLE_GEMINI_BASE_URL`). Needs no root.
pub fn run_client_on_loopback(provider: &FakeProvider, ca: &TestCa, script: &str) -> ClientRun {
    let argv = client_argv(script);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    configure_client_env(&mut cmd, ca);
    let origin = provider.origin();
    cmd.env("OPENAI_BASE_URL", format!("{origin}/v1"))
        .env("ANTHROPIC_BASE_URL", &origin)
        .env("GOOGLE_GEMINI_BASE_URL", &origin);
    let what = format!("client {script} against {origin}");
    ClientRun::finish(run_command(cmd, &what, CLIENT_TIMEOUT))
}

/// A successful client run: its output and its parsed report.
pub struct ClientRun {
    /// What the client printed.
    pub output: CommandOutput,
    /// The parsed JSON report from stdout.
    pub report: ClientReport,
}

impl ClientRun {
    /// Checks the exit status and parses the report, panicking with the output otherwise.
    pub fn finish(output: CommandOutput) -> Self {
        output.assert_success();
        let report = ClientReport::from_json(&output.json())
            .unwrap_or_else(|| panic!("stdout is not a client report\n{output}"));
        ClientRun { output, report }
    }

    /// The answer texts, in call order (calls without text are skipped).
    pub fn texts(&self) -> Vec<&str> {
        self.report
            .results
            .iter()
            .filter_map(|r| r.text.as_deref())
            .collect()
    }

    /// Everything each call reported, in call order, less the tool results
    /// the app itself sent back (not part of the answer): what a replay must
    /// reproduce.
    pub fn answers(&self) -> Vec<Value> {
        self.report
            .results
            .iter()
            .map(|r| {
                let mut raw = r.raw.clone();
                if let Some(object) = raw.as_object_mut() {
                    object.remove("tool_result");
                }
                raw
            })
            .collect()
    }
}

/// The JSON report a client prints.
#[derive(Clone, Debug)]
pub struct ClientReport {
    /// The client program, e.g. `openai_chat.py`.
    pub client: String,
    /// The SDK used, e.g. `openai-python`, `openai-node`.
    pub sdk: String,
    /// The SDK's version.
    pub sdk_version: String,
    /// One entry per API call, in order.
    pub results: Vec<ClientResult>,
}

impl ClientReport {
    /// Reads a report; `None` if `value` does not have the expected shape.
    pub fn from_json(value: &Value) -> Option<Self> {
        Some(ClientReport {
            client: value.get("client")?.as_str()?.to_owned(),
            sdk: value.get("sdk")?.as_str()?.to_owned(),
            sdk_version: value.get("sdk_version")?.as_str()?.to_owned(),
            results: value
                .get("results")?
                .as_array()?
                .iter()
                .map(ClientResult::from_json)
                .collect::<Option<_>>()?,
        })
    }
}

/// One API call as the client saw it.
#[derive(Clone, Debug)]
pub struct ClientResult {
    /// The API called, e.g. `chat.completions`, `responses`, `messages`, `generateContent`.
    pub call: String,
    /// Whether the call streamed.
    pub stream: bool,
    /// The response id (message id, response id, ...), if the API has one.
    pub id: Option<String>,
    /// The answer text (None for tool calls and embeddings).
    pub text: Option<String>,
    /// Finish or stop reason as the SDK reports it.
    pub finish_reason: Option<String>,
    /// Token usage as the SDK reports it.
    pub usage: Option<Usage>,
    /// The tool call, `{"id", "name", "arguments"}`, or Null.
    pub tool_call: Value,
    /// The whole result object (e.g. `values` of an embedding, `chunks` of a stream).
    pub raw: Value,
}

impl ClientResult {
    fn from_json(value: &Value) -> Option<Self> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(ClientResult {
            call: value.get("call")?.as_str()?.to_owned(),
            stream: value.get("stream")?.as_bool()?,
            id: text("id"),
            text: text("text"),
            finish_reason: text("finish_reason"),
            usage: value.get("usage").and_then(Usage::from_json),
            tool_call: value.get("tool_call").cloned().unwrap_or(Value::Null),
            raw: value.clone(),
        })
    }

    /// The `nonce-<16 hex>` in the text (or in the tool call's arguments), if any.
    pub fn nonce(&self) -> Option<String> {
        self.text
            .as_deref()
            .and_then(find_nonce)
            .or_else(|| find_nonce(&self.tool_call.to_string()))
    }
}

/// The first `nonce-<16 hex digits>` in `text`.
pub fn find_nonce(text: &str) -> Option<String> {
    text.match_indices("nonce-").find_map(|(at, _)| {
        let candidate = text.get(at..at + "nonce-".len() + 16)?;
        candidate["nonce-".len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| candidate.to_owned())
    })
}
