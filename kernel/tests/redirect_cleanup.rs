//! Privileged test: the original destinations the redirect keeps for replayd do not outlive
//! their connections in the map of open ones. Many short connections from the cgroup reach a
//! listener that never asks for their original destination, as replayd's DNS responder and a
//! refused connection never do: closed normally by the client, closed first by the listener,
//! and reset by the client. Once they are all closed that map holds none of them, and a late
//! reader still gets a closed connection's destination, once.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use llmsim_kernel::{
    cgroup::Cgroup,
    redirect::{Redirect, RedirectSettings},
};

/// An address no interface answers on: only the redirect can make it work.
const RECORDED: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 2);
/// Connections of each kind.
const EACH: usize = 20;

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => panic!("bound on 127.0.0.1"),
    }
}

#[test]
fn original_destinations_not_asked_for_leave_the_open_map_when_connections_close() {
    if !llmsim_tests::privileged("redirect cleanup") {
        return;
    }
    let cgroup = Cgroup::create("redirect-cleanup-test").expect("create a cgroup");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let dns = TcpListener::bind("127.0.0.1:0").expect("dns stand-in");
    let settings = RedirectSettings {
        listener_v4: v4(listener.local_addr().unwrap()),
        listener_v6: None,
        dns: v4(dns.local_addr().unwrap()),
        dns_v6: None,
        hosts: vec![RECORDED],
        all_hosts: false,
    };
    let mut redirect = Redirect::attach(cgroup.path(), &settings).expect("attach the redirect");

    // In the cgroup: EACH connections closed by the client after its answer, EACH the server
    // closes unread, EACH the client resets (SO_LINGER 0).
    let script = format!(
        r#"import socket, struct, sys
for kind in ("answered", "refused", "reset"):
    for _ in range({EACH}):
        s = socket.socket()
        s.settimeout(10)
        s.connect(("{RECORDED}", 443))
        if kind == "answered":
            s.sendall(b"ping")
            assert s.recv(16) == b"pong", kind
        elif kind == "refused":
            assert s.recv(16) == b"", kind
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"ping")
            assert s.recv(16) == b"pong", kind
        s.close()
print("done", flush=True)
"#
    );
    let client = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c '{script}'",
            cgroup.path().display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the client");
    let mut peers = Vec::new();
    for kind in ["answered", "refused", "reset"] {
        for _ in 0..EACH {
            let (mut stream, peer) = listener.accept().expect("accept a redirected connection");
            peers.push(peer);
            if kind == "refused" {
                drop(stream);
                continue;
            }
            let mut ping = [0u8; 4];
            stream.read_exact(&mut ping).expect("read ping");
            stream.write_all(b"pong").expect("write pong");
            // Wait for the client's close (or reset) before closing this side.
            let _ = stream.read(&mut ping);
        }
    }
    let out = client.wait_with_output().expect("wait for the client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "done\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Closing ends in TCP_CLOSE within a round trip on loopback; poll the map for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = redirect
            .original_destinations_held()
            .expect("read the original destinations");
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} original destinations still held for closed connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let late = *peers.last().expect("connections were made");
    assert_eq!(
        redirect.original_destination(late),
        Some(SocketAddr::V4(SocketAddrV4::new(RECORDED, 443))),
        "a late reader gets a closed connection's destination"
    );
    assert_eq!(redirect.original_destination(late), None, "once");
}
