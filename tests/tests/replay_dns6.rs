//! DNS under replay whatever the app's resolver looks like. The namespace's resolv.conf names
//! an IPv6 nameserver, a stand-in on the namespace's loopback that counts every query: glibc
//! (UDP and TCP), a socket with `IPV6_V6ONLY` and c-ares (node's `dns.resolve4`, which checks
//! the source of each answer) must all get replay's answer for a recorded host, and the
//! stand-in must see nothing. c-ares is also checked against the machine's own (IPv4)
//! nameserver, and must answer in well under its 27 s timeout.

use std::io::Read as _;
use std::net::{IpAddr, Ipv6Addr};
use std::process::Stdio;
use std::time::Duration;

use llmsim_tests::{
    ChildGuard, CommandOutput, Lines, TestNetns, privileged, replayd, run_command,
    snapshot::openai_models,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);

/// The stand-in nameserver (a unique local address), inside the test's namespace only.
const NAMESERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53);

/// A resolver on UDP and TCP port 53 of `argv[1]` answering every AAAA query with its own
/// address (A: no answer), as a real resolver would send the app elsewhere. It prints `ready`
/// once bound and, on SIGTERM, `queries N`.
const STAND_IN_SCRIPT: &str = r#"
import os, signal, socket, struct, sys, threading
addr = sys.argv[1]
queries = 0
lock = threading.Lock()

def answer(query):
    global queries
    with lock:
        queries += 1
    end = query.index(b"\0", 12) + 5
    qtype = struct.unpack(">H", query[end - 4:end - 2])[0]
    record = b""
    if qtype == 28:
        record = b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x05\x00\x10" + socket.inet_pton(socket.AF_INET6, addr)
    header = query[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1 if record else 0, 0, 0)
    print("dns query type", qtype, flush=True)
    return header + query[12:end] + record

udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind((addr, 53))
tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((addr, 53))
tcp.listen(64)

def serve_udp():
    while True:
        query, peer = udp.recvfrom(4096)
        udp.sendto(answer(query), peer)

def serve_tcp():
    while True:
        conn, peer = tcp.accept()
        with conn:
            while True:
                head = conn.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    break
                query = conn.recv(struct.unpack(">H", head)[0], socket.MSG_WAITALL)
                reply = answer(query)
                conn.sendall(struct.pack(">H", len(reply)) + reply)

def stop(signum, frame):
    with lock:
        print("queries", queries, flush=True)
    os._exit(0)

signal.signal(signal.SIGTERM, stop)
threading.Thread(target=serve_udp, daemon=True).start()
threading.Thread(target=serve_tcp, daemon=True).start()
print("ready", flush=True)
signal.pause()
"#;

/// Asks the nameserver `argv[1]` for the A record of api.openai.com from sockets with
/// `IPV6_V6ONLY` (they can reach no IPv4 address, mapped or not): UDP with `sendto` on an
/// unconnected socket, then TCP. Prints `udp <answer> from <source>` and `tcp <answer>`.
const V6ONLY_SCRIPT: &str = r#"
import socket, struct, sys
server = sys.argv[1]
name = b"".join(bytes([len(p)]) + p for p in b"api.openai.com".split(b".")) + b"\0"
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"

def address(reply):
    assert reply[:2] == b"\x12\x34", reply
    return socket.inet_ntoa(reply[-4:]) if struct.unpack(">H", reply[6:8])[0] else "none"

udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
udp.settimeout(10)
udp.sendto(query, (server, 53))
reply, source = udp.recvfrom(4096)
print("udp", address(reply), "from", source[0], flush=True)

tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
tcp.settimeout(10)
tcp.connect((server, 53))
tcp.sendall(struct.pack(">H", len(query)) + query)
size = struct.unpack(">H", tcp.recv(2, socket.MSG_WAITALL))[0]
print("tcp", address(tcp.recv(size, socket.MSG_WAITALL)), flush=True)
"#;

/// `getaddrinfo` for api.openai.com (any family, no flags: what curl and Python's HTTP
/// clients ask glibc), one address a line.
const GETADDRINFO_SCRIPT: &str = r#"
import socket
for address in sorted({a[4][0] for a in socket.getaddrinfo("api.openai.com", 443, type=socket.SOCK_STREAM)}):
    print(address)
"#;

/// `dns.resolve4` through c-ares, timed in the script. Prints `{"addresses": [...], "ms": N}`.
const RESOLVE4_SCRIPT: &str = r#"
const start = performance.now();
require("dns").promises.resolve4("api.openai.com").then(
  (addresses) => console.log(JSON.stringify({ addresses, ms: performance.now() - start })),
  (e) => { console.error("resolve4 failed:", e); process.exit(1); },
);
"#;

/// Runs `argv` under `replayd --in snapshot --` in `netns`.
fn replay(netns: &TestNetns, snapshot: &std::path::Path, argv: &[&str]) -> CommandOutput {
    let mut cmd = netns.command(replayd());
    cmd.arg("--in").arg(snapshot).arg("--").args(argv);
    run_command(cmd, &format!("replay of {}", argv.join(" ")), TIMEOUT)
}

/// The stand-in nameserver, running in its namespace until [`StandIn::queries`].
struct StandIn {
    child: ChildGuard,
    lines: Lines,
    stderr: std::process::ChildStderr,
}

impl StandIn {
    fn start(netns: &TestNetns) -> Self {
        let mut cmd = netns.command("python3");
        cmd.args(["-c", STAND_IN_SCRIPT, &NAMESERVER.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd, "the stand-in nameserver");
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let stderr = child.child_mut().stderr.take().expect("piped stderr");
        let mut lines = Lines::new(stdout, "the stand-in nameserver");
        lines.wait_for(|l| l == "ready", TIMEOUT, String::new);
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// Stops the stand-in and returns its `queries N` line and everything it printed.
    fn queries(mut self) -> (String, String) {
        self.child.signal("TERM");
        let stderr = &mut self.stderr;
        let counted = self.lines.wait_for(
            |l| l.starts_with("queries "),
            TIMEOUT,
            || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                format!("stand-in stderr:\n{text}")
            },
        );
        (counted, self.lines.seen().join("\n"))
    }
}

#[test]
fn an_ipv6_nameserver_is_answered_by_replay() {
    if !privileged("replay with an IPv6 nameserver") {
        return;
    }
    let (snapshot, answer) = openai_models();
    let netns = TestNetns::offline_with_stand_in(IpAddr::V6(NAMESERVER));
    let stand_in = StandIn::start(&netns);

    // glibc over UDP, glibc over TCP (`use-vc`), then a call to the recorded host.
    let glibc = replay(
        &netns,
        snapshot.path(),
        &[
            "sh",
            "-c",
            "python3 -c \"$0\" && RES_OPTIONS=use-vc python3 -c \"$0\" \
             && curl --silent --show-error --max-time 20 https://api.openai.com/v1/models",
            GETADDRINFO_SCRIPT,
        ],
    );
    let v6only = replay(
        &netns,
        snapshot.path(),
        &["python3", "-c", V6ONLY_SCRIPT, &NAMESERVER.to_string()],
    );
    let (counted, seen) = stand_in.queries();

    assert_eq!(
        counted, "queries 0",
        "DNS reached the stand-in nameserver:\n{seen}\n{glibc}\n{v6only}"
    );
    assert!(glibc.status.success(), "{glibc}");
    let resolved: Vec<&str> = glibc.stdout.lines().take(4).collect();
    assert_eq!(
        resolved,
        [
            "127.77.0.1",
            "::ffff:127.77.0.1",
            "127.77.0.1",
            "::ffff:127.77.0.1"
        ],
        "glibc gets replay's A and AAAA answers over UDP and TCP:\n{glibc}"
    );
    assert!(
        glibc.stdout.ends_with(&answer.to_string()),
        "curl gets the recorded answer:\n{glibc}"
    );
    assert!(v6only.status.success(), "{v6only}");
    let expected_udp = format!("udp 127.77.0.1 from {NAMESERVER}");
    assert_eq!(
        v6only.stdout.lines().collect::<Vec<_>>(),
        [expected_udp.as_str(), "tcp 127.77.0.1"],
        "an IPV6_V6ONLY socket gets replay's answer, from the nameserver it asked:\n{v6only}"
    );
}

/// Runs [`RESOLVE4_SCRIPT`] under replay in `netns` and checks that it got replay's address
/// for the recorded host in well under c-ares' timeout.
fn assert_resolve4_answered_by_replay(netns: &TestNetns) {
    let (snapshot, _) = openai_models();
    let output = replay(netns, snapshot.path(), &["node", "-e", RESOLVE4_SCRIPT]);
    assert!(output.status.success(), "{output}");
    let result: serde_json::Value = serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("node printed no result ({e}):\n{output}"));
    let ms = result["ms"].as_f64().expect("ms");
    println!("dns.resolve4 under replay took {ms:.1} ms");
    assert_eq!(
        result["addresses"],
        json!(["127.77.0.1"]),
        "resolve4 gets replay's address for the recorded host:\n{output}"
    );
    assert!(
        ms < 5000.0,
        "resolve4 took {ms:.0} ms; c-ares waited for a reply it did not accept:\n{output}"
    );
}

#[test]
fn node_resolve4_is_answered_by_replay() {
    if !privileged("replay of node's dns.resolve4") {
        return;
    }
    assert_resolve4_answered_by_replay(&TestNetns::offline());
}

#[test]
fn node_resolve4_with_an_ipv6_nameserver_is_answered_by_replay() {
    if !privileged("replay of node's dns.resolve4 with an IPv6 nameserver") {
        return;
    }
    let netns = TestNetns::offline_with_stand_in(IpAddr::V6(NAMESERVER));
    let stand_in = StandIn::start(&netns);
    assert_resolve4_answered_by_replay(&netns);
    let (counted, seen) = stand_in.queries();
    assert_eq!(counted, "queries 0", "DNS reached the stand-in:\n{seen}");
}
