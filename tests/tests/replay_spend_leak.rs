//! No spend leak under replay: with the default `--on-miss fail`, a call to a known provider
//! host that is not in the recording must not reach that provider. The namespace stands in
//! for a machine with a network: its resolver answers api.anthropic.com with the address of
//! a stand-in provider, exactly as the real resolver would send the app to the real, paid
//! API. Replay must answer the name itself, take the connection and fail it as a miss; the
//! stand-in must see nothing.

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use llmsim_tests::{
    ChildGuard, Lines, TestNetns, flows::replayd_command, privileged, run_command,
    snapshot::openai_models,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The stand-in for the outside world (TEST-NET-1), inside the test's namespace only.
const STAND_IN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// A resolver on UDP port 53 answering every A query with the stand-in's own address
/// (AAAA: no answer), and a provider on TCP port 443 counting connections. It prints
/// `ready` once both are bound and, on SIGTERM, takes every connection still queued and
/// prints `connections N`.
const STAND_IN_SCRIPT: &str = r#"
import os, signal, socket, struct, sys, threading
addr = sys.argv[1]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((addr, 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((addr, 443))
tcp.listen(64)
connections = 0

def resolver():
    while True:
        query, peer = udp.recvfrom(4096)
        end = query.index(b"\0", 12) + 5
        qtype = struct.unpack(">H", query[end - 4:end - 2])[0]
        answer = b""
        if qtype == 1:
            answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04" + socket.inet_aton(addr)
        header = query[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1 if answer else 0, 0, 0)
        udp.sendto(header + query[12:end] + answer, peer)
        print("dns query type", qtype, flush=True)

def stop(signum, frame):
    global connections
    tcp.setblocking(False)
    while True:
        try:
            tcp.accept()[0].close()
        except BlockingIOError:
            break
        connections += 1
    print("connections", connections, flush=True)
    os._exit(0)

signal.signal(signal.SIGTERM, stop)
threading.Thread(target=resolver, daemon=True).start()
print("ready", flush=True)
while True:
    conn, peer = tcp.accept()
    connections += 1
    print("connection from", peer[0], flush=True)
    conn.close()
"#;

#[test]
fn an_unrecorded_provider_host_is_a_miss_and_never_reached() {
    if !privileged("replay of an unrecorded provider host") {
        return;
    }
    // The snapshot holds one OpenAI exchange and nothing for Anthropic.
    let (snapshot, _) = openai_models();

    let netns = TestNetns::offline_with_stand_in(STAND_IN);
    let mut stand_in_cmd = netns.command("python3");
    stand_in_cmd
        .args(["-c", STAND_IN_SCRIPT, &STAND_IN.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut stand_in = ChildGuard::spawn(&mut stand_in_cmd, "the stand-in provider");
    let stdout = stand_in.child_mut().stdout.take().expect("piped stdout");
    let mut stderr = stand_in.child_mut().stderr.take().expect("piped stderr");
    let mut lines = Lines::new(stdout, "the stand-in provider");
    lines.wait_for(|l| l == "ready", TIMEOUT, String::new);

    let cmd = replayd_command(
        &netns,
        snapshot.path(),
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--write-out",
            "\nstatus %{http_code}\n",
            "https://api.anthropic.com/v1/messages",
            "-H",
            "x-api-key: sk-ant-must-never-be-sent",
            "-H",
            "anthropic-version: 2023-06-01",
            "-H",
            "content-type: application/json",
            "--data",
            r#"{"model":"claude-3-5-haiku-latest","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#,
        ],
    );
    let output = run_command(cmd, "replay of curl to api.anthropic.com", TIMEOUT);

    stand_in.signal("TERM");
    let counted = lines.wait_for(
        |l| l.starts_with("connections "),
        TIMEOUT,
        || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            format!("stand-in stderr:\n{text}")
        },
    );
    assert_eq!(
        counted,
        "connections 0",
        "the call reached the stand-in for the real provider:\n{}\n{output}",
        lines.seen().join("\n")
    );
    assert!(
        output.stdout.contains("status 404"),
        "the app must get replay's miss answer:\n{output}"
    );
    assert!(
        output.stdout.contains("llmsim replayd: ")
            && output.stdout.contains("api.anthropic.com")
            && output.stdout.contains("Closest recorded exchange"),
        "the miss answer names the request and the closest recording:\n{output}"
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "a miss must fail the run:\n{output}"
    );
    assert!(
        output.stderr.contains("replayd: miss: ") && output.stderr.contains("api.anthropic.com"),
        "replayd reports the miss:\n{output}"
    );
}
