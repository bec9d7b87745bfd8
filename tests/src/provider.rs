//! The fake LLM provider (`tests/fake_provider/fake_provider.py`) as a RAII guard: started inside
//! a [`TestNetns`] on `127.0.0.1:443` and `[::1]:443` with the [`TestCa`] leaf (or, unprivileged, on a
//! free loopback port of the current namespace), waited for through its `ready` line, killed on
//! drop. Its JSON-lines request log is parsed into [`ProviderRequest`]s; each entry is written
//! before the response is sent, so it is complete as soon as a client has its answer.
//!
//! The provider runs outside any process a test captures: only the client's traffic is recorded.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use llmsim_snapshot::model::Exchange;
use serde_json::Value;
use tempfile::TempDir;

use crate::ca::TestCa;
use crate::netns::TestNetns;
use crate::process::{ChildGuard, Lines};

/// How long the fake provider may take to print `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of the fake provider.
#[derive(Clone, Debug)]
pub struct FakeProviderConfig {
    /// Delay between stream events (`--event-delay-ms`).
    pub event_delay: Duration,
    /// Gzip non-streamed bodies for clients that accept gzip (`--gzip`).
    pub gzip: bool,
    /// Log every request and connection error to the provider's stderr (`--verbose`).
    pub verbose: bool,
}

impl Default for FakeProviderConfig {
    fn default() -> Self {
        FakeProviderConfig {
            event_delay: Duration::from_millis(20),
            gzip: false,
            verbose: false,
        }
    }
}

/// A running fake provider; killed on drop.
pub struct FakeProvider {
    // Declared first so it drops (is killed) before its directory is removed.
    child: ChildGuard,
    _stdout: Lines,
    addrs: Vec<SocketAddr>,
    tls: bool,
    dir: TempDir,
}

impl FakeProvider {
    /// Starts the provider inside `netns` on `127.0.0.1:443` and `[::1]:443`, serving TLS with the
    /// `ca` leaf (valid for every provider host name), with default options.
    pub fn start(netns: &TestNetns, ca: &TestCa) -> Self {
        Self::start_with(netns, ca, &FakeProviderConfig::default())
    }

    /// [`FakeProvider::start`] with options.
    pub fn start_with(netns: &TestNetns, ca: &TestCa, config: &FakeProviderConfig) -> Self {
        let cmd = netns.command("python3");
        Self::spawn(
            cmd,
            &format!("fake provider in network namespace {}", netns.name()),
            &["127.0.0.1:443", "[::1]:443"],
            Some(ca),
            config,
        )
    }

    /// Starts the provider inside `netns` serving plain HTTP on `listen` (such as
    /// `127.0.0.1:11434`, where a local model server like Ollama listens): the `OpenAI` paths
    /// and Ollama's native `/api/chat` and `/api/generate`.
    pub fn start_plain(netns: &TestNetns, listen: &str, config: &FakeProviderConfig) -> Self {
        Self::spawn(
            netns.command("python3"),
            &format!("plain fake provider in network namespace {}", netns.name()),
            &[listen],
            None,
            config,
        )
    }

    /// Starts the provider in the current network namespace on a free port of 127.0.0.1 (no
    /// root needed). With `ca`, it serves TLS with the test leaf (valid for `127.0.0.1` and
    /// `localhost`); without, plain HTTP. Clients reach it through base-URL settings, e.g.
    /// [`crate::run_client_on_loopback`].
    pub fn start_on_loopback(ca: Option<&TestCa>, config: &FakeProviderConfig) -> Self {
        Self::spawn(
            Command::new("python3"),
            "fake provider on loopback",
            &["127.0.0.1:0"],
            ca,
            config,
        )
    }

    fn spawn(
        mut cmd: Command,
        what: &str,
        listen: &[&str],
        ca: Option<&TestCa>,
        config: &FakeProviderConfig,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("llmsim-fake-provider-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for the {what}: {e}"));
        let log = dir.path().join("requests.jsonl");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr_path.display()));

        cmd.arg("-u").arg(crate::paths::fake_provider_script());
        for addr in listen {
            cmd.arg("--listen").arg(addr);
        }
        match ca {
            Some(ca) => {
                cmd.arg("--cert")
                    .arg(ca.leaf_cert_path())
                    .arg("--key")
                    .arg(ca.leaf_key_path());
            }
            None => {
                cmd.arg("--plain");
            }
        }
        cmd.arg("--log").arg(&log);
        cmd.arg("--event-delay-ms")
            .arg(format!("{}", config.event_delay.as_secs_f64() * 1000.0));
        if config.gzip {
            cmd.arg("--gzip");
        }
        if config.verbose {
            cmd.arg("--verbose");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);

        let mut child = ChildGuard::spawn(&mut cmd, what);
        let stdout = child.child_mut().stdout.take().expect("stdout is piped");
        let mut lines = Lines::new(stdout, what);
        let stderr_text = || {
            format!(
                "--- fake provider stderr ---\n{}",
                read_or_empty(&stderr_path)
            )
        };
        lines.wait_for(|l| l == "ready", START_TIMEOUT, stderr_text);
        let addrs = lines
            .seen()
            .iter()
            .filter_map(|l| l.strip_prefix("listening "))
            .map(|a| {
                a.parse()
                    .unwrap_or_else(|e| panic!("fake provider printed a bad address {a:?}: {e}"))
            })
            .collect();
        FakeProvider {
            child,
            _stdout: lines,
            addrs,
            tls: ca.is_some(),
            dir,
        }
    }

    /// The addresses listened on, as bound (with the real port when 0 was asked for).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first address listened on (127.0.0.1:443 in a namespace, 127.0.0.1:<free> otherwise).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// `https://127.0.0.1:<port>` (or `http://` for plain HTTP): the origin of [`Self::addr`].
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr()
        )
    }

    /// The fake provider's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JSON-lines request log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    /// What the provider wrote to stderr so far (tracebacks, `--verbose` logging).
    pub fn stderr(&self) -> String {
        read_or_empty(&self.dir.path().join("stderr.log"))
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<ProviderRequest> {
        let path = self.log_path();
        read_or_empty(&path)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let raw: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("bad line in {}: {e}\n{line}", path.display()));
                ProviderRequest::from_json(raw)
            })
            .collect()
    }

    /// The request whose answer carries `nonce`; panics listing what was served if none does.
    pub fn request_with_nonce(&self, nonce: &str) -> ProviderRequest {
        let requests = self.requests();
        requests
            .iter()
            .find(|r| r.nonce.as_deref() == Some(nonce))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "the fake provider served no answer with {nonce}; served:\n{}",
                    summary(&requests)
                )
            })
    }
}

/// Token usage as the fake provider computed it: input = whitespace words in all message texts,
/// output = words in the answer text (or in a tool call's arguments JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
}

impl Usage {
    /// Reads `{"input_tokens": n, "output_tokens": m}`; `None` for null or missing.
    pub fn from_json(value: &Value) -> Option<Usage> {
        Some(Usage {
            input_tokens: value.get("input_tokens")?.as_u64()?,
            output_tokens: value.get("output_tokens")?.as_u64()?,
        })
    }
}

/// One request the fake provider served, from its log.
#[derive(Clone, Debug)]
pub struct ProviderRequest {
    /// HTTP method.
    pub method: String,
    /// Request target: path and query string.
    pub path: String,
    /// The Host header.
    pub host: Option<String>,
    /// The TLS server name the client sent (None for plain HTTP or no SNI).
    pub sni: Option<String>,
    /// Request headers, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// The request body parsed as JSON (Null when empty or not JSON).
    pub body: Value,
    /// The request body exactly as received (empty when there was none).
    pub body_bytes: Vec<u8>,
    /// `openai`, `anthropic` or `gemini`: the wire format answered in.
    pub provider: String,
    /// What was answered, e.g. `openai.chat.completions`, `anthropic.messages`,
    /// `gemini.streamGenerateContent` (None for errors).
    pub endpoint: Option<String>,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Response status code.
    pub status: u16,
    /// The fresh nonce in the answer (None for errors and model lists).
    pub nonce: Option<String>,
    /// The answer text (None for tool calls, embeddings and errors).
    pub answer: Option<String>,
    /// The tool call answered, in the provider's own shape, or Null.
    pub tool_call: Value,
    /// Token usage reported in the answer.
    pub usage: Option<Usage>,
    /// Response headers, names lowercased.
    pub response_headers: BTreeMap<String, String>,
    /// The full response body as sent (for streams, every event; before any gzip).
    pub response_body: String,
    /// The whole log entry.
    pub raw: Value,
}

impl ProviderRequest {
    fn from_json(raw: Value) -> Self {
        let text = |key: &str| raw.get(key).and_then(Value::as_str).map(str::to_owned);
        let map = |key: &str| -> BTreeMap<String, String> {
            raw.get(key)
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        ProviderRequest {
            method: text("method").unwrap_or_default(),
            path: text("path").unwrap_or_default(),
            host: text("host"),
            sni: text("sni"),
            headers: map("headers"),
            body: raw.get("body").cloned().unwrap_or(Value::Null),
            body_bytes: raw
                .get("body_hex")
                .and_then(Value::as_str)
                .map(unhex)
                .unwrap_or_default(),
            provider: text("provider").unwrap_or_default(),
            endpoint: text("endpoint"),
            stream: raw.get("stream").and_then(Value::as_bool).unwrap_or(false),
            status: raw
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or_default(),
            nonce: text("nonce"),
            answer: text("answer"),
            tool_call: raw.get("tool_call").cloned().unwrap_or(Value::Null),
            usage: raw.get("usage").and_then(Usage::from_json),
            response_headers: map("response_headers"),
            response_body: text("response_body").unwrap_or_default(),
            raw,
        }
    }

    /// A request header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Checks that `exchange` (an exchange file, parsed) holds this request's body and the
    /// response body the provider sent, byte for byte as replay would send them (the
    /// response before any Content-Encoding).
    pub fn assert_recorded_as_sent(&self, exchange: &Value) {
        let what = format!("{} {}", self.method, self.path);
        let recorded: Exchange = serde_json::from_value(exchange.clone())
            .unwrap_or_else(|e| panic!("{what}: not an exchange ({e}): {exchange:#}"));
        let request = recorded.request.body.to_bytes();
        assert!(
            request == self.body_bytes,
            "{what}: recorded request body differs from the bytes the provider received\n\
             recorded: {}\nreceived: {}",
            String::from_utf8_lossy(&request),
            String::from_utf8_lossy(&self.body_bytes)
        );
        let response = recorded.response.body.to_bytes();
        assert!(
            response == self.response_body.as_bytes(),
            "{what}: recorded response body differs from the bytes the provider sent\n\
             recorded: {}\nsent: {}",
            String::from_utf8_lossy(&response),
            self.response_body
        );
    }

    /// A response header by (case-insensitive) name.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// One line per request, for panic messages.
fn summary(requests: &[ProviderRequest]) -> String {
    requests
        .iter()
        .map(|r| {
            format!(
                "  {} {} host={:?} status={} endpoint={:?} nonce={:?}",
                r.method, r.path, r.host, r.status, r.endpoint, r.nonce
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bytes from the hex the provider logs.
fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .unwrap_or_else(|| panic!("the provider logged bad hex: {text}"))
        })
        .collect()
}

fn read_or_empty(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}
