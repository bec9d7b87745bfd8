//! What a load test really sends: a recorded official-SDK POST. The request is the first
//! chat completion openai-python made in the triage demo's recording (its JSON body of about
//! 1.5 KB and the headers the SDK sends), which replayd matches by signature like any other;
//! wrk sends it, headers and body, through a Lua script, 64 keep-alive connections in a
//! closed loop. Two comparisons, each of the same load on the same machine in the same run:
//!
//! - `sdk-post`: `replayd --listen` answering it from the recording against nginx returning a
//!   fixed body of the same size from memory (the recorded answer with the three characters
//!   nginx.conf cannot quote replaced), nginx's cheapest path, with the recorded answer's
//!   headers, so that both servers send as many bytes (18 header lines each for the
//!   recorded answer, not nginx's bare 5). Beside them, hyper answering the recorded answer
//!   with nothing of replayd in it (`llmsim-bare-hyper`, a binary of the tests crate): the
//!   ceiling for a server built on hyper, which tells replayd's own cost apart from its
//!   HTTP stack's.
//! - `mitmproxy`: mitmproxy's server replay, `mitmdump --server-replay` in reverse-proxy mode,
//!   serving the same exchange, written as a flow file through mitmproxy's own Python API
//!   (mitmproxy lives in its own virtualenv, made by `scripts/setup.sh --bench`).
//!
//! Every server answers one request first, checked: replayd and mitmproxy with the recorded
//! answer's very bytes, nginx with as many.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use llmsim_snapshot::model::Exchange;
use llmsim_tests::{
    TestCa,
    paths::repo_root,
    snapshot::{end_to_end, write},
};

use super::{Args, Sample, Variant, fetch, load_average, wrk};
use crate::bench_support::{
    Guard, Nginx, READY_TIMEOUT, Replayd, every_round, free_port, list_ratios, median,
    release_binary,
};

/// The recording the request and its answer come from, and the request's path.
const RECORDING: &str = "examples/triage/llmsim";
const PATH: &str = "/v1/chat/completions";
/// The bench's targets: replayd's rate as a share of nginx's, and as a multiple of
/// mitmproxy's.
const TARGET_VS_NGINX: f64 = 0.8;
const TARGET_VS_MITMPROXY: f64 = 100.0;

/// A server answering the POST.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Replayd,
    Nginx,
    /// `llmsim-bare-hyper`, run with nginx.
    Hyper,
    Mitmproxy,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Replayd => "replayd",
            Target::Nginx => "nginx",
            Target::Hyper => "hyper",
            Target::Mitmproxy => "mitmproxy",
        }
    }
}

/// The recorded POST: its exchange and what goes on the wire.
struct Post {
    exchange: Exchange,
    /// The request headers wrk sends besides `Host` and `Content-Length`, which it makes.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The recorded answer's body as replay sends it.
    answer: Vec<u8>,
    /// The recorded answer's headers but `Content-Length` and the hop-by-hop ones.
    answer_headers: Vec<(String, String)>,
}

impl Post {
    /// The first `POST /v1/chat/completions` to `OpenAI` in [`RECORDING`].
    fn recorded() -> anyhow::Result<Self> {
        let dir = repo_root().join(RECORDING);
        let snapshot = llmsim_snapshot::store::load(&dir)
            .with_context(|| format!("loading {}", dir.display()))?;
        let exchange = snapshot
            .exchanges
            .into_iter()
            .map(|r| r.exchange)
            .find(|e| {
                e.host == "api.openai.com" && e.request.method == "POST" && e.request.path == PATH
            })
            .with_context(|| format!("no POST {PATH} to api.openai.com in {}", dir.display()))?;
        let headers = end_to_end(&exchange.request.headers, &["host", "content-length"]);
        let answer_headers = end_to_end(&exchange.response.headers, &["content-length"]);
        Ok(Self {
            headers,
            answer_headers,
            body: exchange.request.body.to_bytes(),
            answer: exchange.response.body.to_bytes(),
            exchange,
        })
    }

    /// The request as one HTTP/1.1 message to `addr`, closing the connection.
    fn message(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!("POST {PATH} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );
        let mut message = head.into_bytes();
        message.extend_from_slice(&self.body);
        message
    }

    /// wrk's script sending this request: method, headers and body.
    fn wrk_script(&self) -> String {
        let mut lua = format!("wrk.method = \"POST\"\nwrk.path = \"{PATH}\"\n");
        for (name, value) in &self.headers {
            let _ = writeln!(
                lua,
                "wrk.headers[{}] = {}",
                lua_string(name.as_bytes()),
                lua_string(value.as_bytes())
            );
        }
        let _ = writeln!(lua, "wrk.body = {}", lua_string(&self.body));
        lua
    }
}

/// `bytes` as a Lua string literal: printable ASCII as itself, the rest as `\ddd`.
fn lua_string(bytes: &[u8]) -> String {
    let mut literal = String::from("\"");
    for &b in bytes {
        match b {
            b'\\' => literal.push_str("\\\\"),
            b'"' => literal.push_str("\\\""),
            0x20..=0x7e => literal.push(char::from(b)),
            _ => {
                let _ = write!(literal, "\\{b:03}");
            }
        }
    }
    literal.push('"');
    literal
}

/// Writes the flow file mitmproxy replays: the exchange as one `HTTPFlow`, through
/// mitmproxy's own `FlowWriter`. Reads a JSON description (argv[1]), writes argv[2].
const WRITE_FLOW: &str = r#"
import json, sys, time
from mitmproxy import connection, http, io

spec = json.load(open(sys.argv[1]))
fields = lambda pairs: [(n.encode(), v.encode()) for n, v in pairs]
flow = http.HTTPFlow(
    connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=time.time()),
    connection.Server(address=(spec["host"], 443)),
)
flow.request = http.Request.make(
    "POST", spec["url"], bytes.fromhex(spec["body"]), fields(spec["headers"]))
flow.response = http.Response.make(
    spec["status"], bytes.fromhex(spec["answer"]), fields(spec["answer_headers"]))
with open(sys.argv[2], "wb") as out:
    io.FlowWriter(out).add(flow)
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The virtualenv `scripts/setup.sh --bench` installs mitmproxy into, at the version it pins.
fn mitmproxy_venv() -> anyhow::Result<PathBuf> {
    let setup = repo_root().join("scripts/setup.sh");
    let text =
        std::fs::read_to_string(&setup).with_context(|| format!("reading {}", setup.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("MITMPROXY_VERSION="))
        .with_context(|| format!("no MITMPROXY_VERSION= in {}", setup.display()))?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(format!(".local/share/llmsim/mitmproxy-{version}")))
}

/// mitmdump replaying the exchange on a free loopback port, stopped on drop.
struct Mitmdump {
    child: Guard,
    addr: SocketAddr,
}

impl Mitmdump {
    fn start(scratch: &Path, post: &Post) -> anyhow::Result<Self> {
        let mut venv = mitmproxy_venv()?;
        if !venv.join("bin/mitmdump").is_file() {
            let setup = repo_root().join("scripts/setup.sh");
            eprintln!("xtask: {} --bench", setup.display());
            let status = Command::new(&setup).arg("--bench").status()?;
            ensure!(status.success(), "`{} --bench` failed", setup.display());
            venv = mitmproxy_venv()?;
        }
        let dir = scratch.join("mitmproxy");
        std::fs::create_dir_all(&dir)?;
        let exchange = &post.exchange;
        let spec = serde_json::json!({
            "host": exchange.host,
            "url": format!("https://{}{PATH}", exchange.host),
            "headers": end_to_end(&exchange.request.headers, &[]),
            "body": hex(&post.body),
            "status": exchange.response.status,
            "answer_headers": post.answer_headers,
            "answer": hex(&post.answer),
        });
        let spec_path = dir.join("exchange.json");
        std::fs::write(&spec_path, spec.to_string())?;
        let flows = dir.join("flows");
        let status = Command::new(venv.join("bin/python"))
            .args(["-c", WRITE_FLOW])
            .arg(&spec_path)
            .arg(&flows)
            .status()
            .context("writing the flow file with mitmproxy's Python API")?;
        ensure!(status.success(), "writing the flow file failed ({status})");

        let listen_port = free_port()?;
        let child = Command::new(venv.join("bin/mitmdump"))
            .arg("--quiet")
            .arg("--mode")
            .arg(format!("reverse:https://{}", exchange.host))
            .args([
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                &listen_port.to_string(),
            ])
            .arg("--server-replay")
            .arg(&flows)
            // Serve the one flow to every request; answer 404 to anything else; never
            // connect upstream.
            .args(["--set", "server_replay_reuse=true"])
            .args(["--set", "server_replay_extra=404"])
            .args(["--set", "connection_strategy=lazy"])
            .arg("--set")
            .arg(format!("confdir={}", dir.join("conf").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting mitmdump")?;
        let mut child = Guard::new(child, "mitmdump");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, listen_port));
        let deadline = Instant::now() + READY_TIMEOUT;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            child.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "mitmdump did not listen on {addr} within {READY_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, addr })
    }
}

/// Runs the POST load against replayd and what `args` selects (nginx for `sdk-post`,
/// mitmproxy for `mitmproxy`) and returns the summary; nothing when it selects neither.
pub(super) fn run(
    args: &Args,
    ca: &TestCa,
    nginx_bin: &Path,
    replayd_bin: &Path,
    scratch: &Path,
) -> anyhow::Result<String> {
    let targets: Vec<Target> = [
        (Variant::SdkPost, Target::Nginx),
        (Variant::Mitmproxy, Target::Mitmproxy),
    ]
    .into_iter()
    .filter(|(variant, _)| args.runs(*variant))
    .map(|(_, target)| target)
    .collect();
    if targets.is_empty() {
        return Ok(String::new());
    }
    let post = Post::recorded()?;
    let snapshot = scratch.join("snapshot-sdk-post");
    write(&snapshot, [post.exchange.clone()]);
    let mut replayd = Replayd::start(
        replayd_bin,
        &snapshot,
        &scratch.join("replayd-ca-sdk-post"),
        "instant",
    )?;
    let mut nginx = None;
    let mut bare_hyper = None;
    let mut mitmdump = None;
    let mut addrs = vec![(Target::Replayd, replayd.addr)];
    if targets.contains(&Target::Nginx) {
        // Same size, quotable in nginx.conf.
        let fixed: Vec<u8> = post
            .answer
            .iter()
            .map(|&b| {
                if matches!(b, b'\'' | b'\\' | b'$') {
                    b'_'
                } else {
                    b
                }
            })
            .collect();
        // The recorded headers too, so that both answers are the same size; nginx writes
        // its own of these.
        let headers = end_to_end(
            &post.exchange.response.headers,
            &["content-length", "content-type", "date", "server"],
        );
        let server =
            Nginx::start_answering(nginx_bin, &scratch.join("sdk-post"), &fixed, &headers, ca)?;
        addrs.push((Target::Nginx, server.http));
        nginx = Some(server);
        let bin = release_binary("llmsim-tests", "llmsim-bare-hyper", !args.no_build)?;
        let server = BareHyper::start(&bin, &snapshot)?;
        addrs.push((Target::Hyper, server.addr));
        bare_hyper = Some(server);
    }
    if targets.contains(&Target::Mitmproxy) {
        let server = Mitmdump::start(scratch, &post)?;
        addrs.push((Target::Mitmproxy, server.addr));
        mitmdump = Some(server);
    }

    check_answers(&post, &addrs)?;

    let script = scratch.join("sdk-post.lua");
    std::fs::write(&script, post.wrk_script())
        .with_context(|| format!("writing {}", script.display()))?;
    let (load, samples) = measure(args, &addrs, &script)?;
    replayd.child.check_alive()?;
    if let Some(nginx) = &mut nginx {
        nginx.child.check_alive()?;
    }
    if let Some(bare_hyper) = &mut bare_hyper {
        bare_hyper.child.check_alive()?;
    }
    if let Some(mitmdump) = &mut mitmdump {
        mitmdump.child.check_alive()?;
    }
    Ok(report(args, &load, &post, &addrs, &samples))
}

/// `llmsim-bare-hyper` serving the snapshot's answer.
struct BareHyper {
    child: Guard,
    addr: SocketAddr,
}

impl BareHyper {
    fn start(bin: &Path, snapshot: &Path) -> anyhow::Result<Self> {
        let (child, addr) = Guard::listening(
            Command::new(bin).arg(snapshot),
            "llmsim-bare-hyper",
            "listening on ",
        )?;
        Ok(Self { child, addr })
    }
}

/// One request to each server, checked: replayd, hyper and mitmproxy answer the recorded bytes,
/// nginx as many bytes.
fn check_answers(post: &Post, addrs: &[(Target, SocketAddr)]) -> anyhow::Result<()> {
    for &(target, addr) in addrs {
        let (head, got) = fetch(addr, &post.message(addr))?;
        if target == Target::Nginx {
            ensure!(
                got.len() == post.answer.len(),
                "nginx answered {} body bytes, not {}:\n{head}",
                got.len(),
                post.answer.len()
            );
        } else {
            ensure!(
                got == post.answer,
                "{} answered {} body bytes that differ from the recorded answer:\n{head}",
                target.name(),
                got.len()
            );
        }
        println!(
            "{:<9} POST http://{addr}{PATH} ({} body bytes, {} headers): 200 with {} header \
             bytes + {} body bytes{}",
            target.name(),
            post.body.len(),
            post.headers.len(),
            head.len(),
            got.len(),
            if target == Target::Nginx {
                ", as many as recorded"
            } else {
                ", the recorded answer"
            }
        );
    }

    Ok(())
}

/// A short warm-up of each server, then the measured rounds, each server once a round, the
/// one going first turning; returns the load average as they began, and the samples.
fn measure(
    args: &Args,
    addrs: &[(Target, SocketAddr)],
    script: &Path,
) -> anyhow::Result<(String, Vec<(Target, Sample)>)> {
    let url = |addr: SocketAddr| format!("http://{addr}{PATH}");
    eprintln!("xtask: warming up");
    for &(target, addr) in addrs {
        wrk(args, 1, &url(addr), Some(script))
            .with_context(|| format!("warm-up of {}", target.name()))?;
    }
    let load = load_average();
    let mut samples: Vec<(Target, Sample)> = Vec::new();
    for round in 0..args.rounds {
        // Who goes first turns every round.
        let mut order = addrs.to_vec();
        order.rotate_left(round % addrs.len());
        for (target, addr) in order {
            let sample = wrk(args, args.duration, &url(addr), Some(script))
                .with_context(|| format!("measuring {}", target.name()))?;
            println!(
                "sdk-post {}/{}  {:<9} {:>10.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms",
                round + 1,
                args.rounds,
                target.name(),
                sample.rps,
                sample.p50_ms,
                sample.p99_ms
            );
            samples.push((target, sample));
        }
    }
    Ok((load, samples))
}

fn report(
    args: &Args,
    load: &str,
    post: &Post,
    addrs: &[(Target, SocketAddr)],
    samples: &[(Target, Sample)],
) -> String {
    let of = |target: Target, f: fn(&Sample) -> f64| {
        median(
            samples
                .iter()
                .filter(|(t, _)| *t == target)
                .map(|(_, s)| f(s))
                .collect(),
        )
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsdk-post: the recorded openai-python POST {PATH} ({} body bytes, {} headers, {}-byte \
         answer), wrk -t{} -c{}, closed loop, median of {} x {} s runs per row; load average as \
         the runs began: {load}",
        post.body.len(),
        post.headers.len(),
        post.answer.len(),
        args.threads,
        args.connections,
        args.rounds,
        args.duration
    );
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>10} {:>10} {:>12}",
        "server", "req/s", "p50 ms", "p99 ms", "replayd is"
    );
    let ours = of(Target::Replayd, |s| s.rps);
    let rates = |target: Target| {
        samples
            .iter()
            .filter(move |(t, _)| *t == target)
            .map(|(_, s)| s.rps)
    };
    let mut verdicts = Vec::new();
    for &(target, _) in addrs {
        let rps = of(target, |s| s.rps);
        let _ = writeln!(
            out,
            "{:<10} {:>10.0} {:>10.3} {:>10.3} {:>11.2}x",
            target.name(),
            rps,
            of(target, |s| s.p50_ms),
            of(target, |s| s.p99_ms),
            ours / rps
        );
        let (name, target_ratio) = match target {
            Target::Replayd | Target::Hyper => continue,
            Target::Nginx => (format!("{TARGET_VS_NGINX:.1}x nginx"), TARGET_VS_NGINX),
            Target::Mitmproxy => (
                format!("{TARGET_VS_MITMPROXY:.0}x mitmproxy"),
                TARGET_VS_MITMPROXY,
            ),
        };
        // Each round's ratio, from the runs that took turns in it: met only in every round.
        let ratios: Vec<f64> = rates(Target::Replayd)
            .zip(rates(target))
            .map(|(replayd, other)| replayd / other)
            .collect();
        let (listed, verdict) = every_round(&ratios, target_ratio);
        verdicts.push(format!("replayd >= {name}: rounds {listed}: {verdict}"));
    }
    let _ = writeln!(out, "\ntarget: {}", verdicts.join("; "));
    if addrs.iter().any(|(t, _)| *t == Target::Hyper) {
        let ceiling: Vec<f64> = rates(Target::Hyper)
            .zip(rates(Target::Nginx))
            .map(|(hyper, nginx)| hyper / nginx)
            .collect();
        let _ = writeln!(
            out,
            "hyper alone against nginx, the ceiling for a server built on it: rounds {}",
            list_ratios(&ceiling)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::lua_string;

    #[test]
    fn lua_strings_hold_any_bytes() {
        assert_eq!(lua_string(b"a\"b\\c\n\xc3\xa9"), r#""a\"b\\c\010\195\169""#);
    }
}
