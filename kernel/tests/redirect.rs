//! Privileged test of the replay redirect hooks on their own: inside the cgroup
//! they are attached to, a real curl's TCP connect to a recorded address, IPv4
//! and IPv4-mapped IPv6 connects, and a real resolver's DNS query reach local
//! sockets, with the original destination reported to replayd and shown to the
//! app as its peer; outside that cgroup, and after the hooks are dropped,
//! nothing is redirected.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
    process::{Command, Output},
    time::Duration,
};

use llmsim_kernel::{
    cgroup::Cgroup,
    redirect::{Redirect, RedirectSettings},
};

/// An address no interface answers on: only the redirect can make it work.
const RECORDED: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);

/// Runs `script` with `sh -c` as a member of `cgroup`: the shell joins it
/// before it execs anything, so the command's connects are all inside.
fn run_in(cgroup: Option<&Cgroup>, script: &str) -> std::process::Child {
    let join = cgroup.map_or(String::new(), |c| {
        format!("echo $$ > {}/cgroup.procs && ", c.path().display())
    });
    Command::new("sh")
        .arg("-c")
        .arg(format!("{join}exec {script}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

fn curl(cgroup: Option<&Cgroup>) -> std::process::Child {
    run_in(
        cgroup,
        &format!("curl --silent --show-error --max-time 10 http://{RECORDED}:8080/hello"),
    )
}

/// Answers one plain HTTP request on `listener`; returns the client's address.
fn answer_one(listener: &TcpListener) -> SocketAddr {
    let (mut stream, peer) = listener.accept().expect("accept a redirected connection");
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).expect("read request");
        assert!(n > 0, "client closed early");
        request.extend_from_slice(&buf[..n]);
    }
    assert!(
        request.starts_with(b"GET /hello HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&request)
    );
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nredirected")
        .expect("write");
    peer
}

fn finished(child: std::process::Child) -> Output {
    child.wait_with_output().expect("wait")
}

#[test]
fn connects_and_dns_of_the_cgroup_only_reach_replayd_until_the_hooks_drop() {
    if !llmsim_tests::privileged("redirect hooks") {
        return;
    }
    let cgroup = Cgroup::create("redirect-test").expect("create a cgroup");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let dns = UdpSocket::bind("127.0.0.1:0").expect("dns socket");
    dns.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let as_v4 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => unreachable!("bound on 127.0.0.1"),
    };
    let settings = RedirectSettings {
        listener_v4: as_v4(listener.local_addr().unwrap()),
        listener_v6: None,
        dns: as_v4(dns.local_addr().unwrap()),
        dns_v6: None,
        hosts: vec![RECORDED],
        all_hosts: false,
    };
    let mut redirect = Redirect::attach(cgroup.path(), &settings).expect("attach the redirect");

    // Inside the cgroup: curl reaches the listener, and the original
    // destination is known for the accepted connection.
    let client = curl(Some(&cgroup));
    let peer = answer_one(&listener);
    let out = finished(client);
    assert_eq!(
        out.stdout,
        b"redirected",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        redirect.original_destination(peer),
        Some(SocketAddr::V4(SocketAddrV4::new(RECORDED, 8080)))
    );

    // Inside the cgroup: an IPv4 socket and an IPv6 socket connecting to the
    // IPv4-mapped form (replayd's AAAA answer) are both redirected, and both
    // see the recorded address as their peer.
    let client = run_in(
        Some(&cgroup),
        &format!(
            r#"python3 -c 'import socket
for family, host in ((socket.AF_INET, "{RECORDED}"), (socket.AF_INET6, "::ffff:{RECORDED}")):
    s = socket.socket(family)
    s.settimeout(10)
    s.connect((host, 8080))
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: recorded\r\n\r\n")
    peer = s.getpeername()
    while s.recv(1024):
        pass
    print(peer[0], peer[1])'"#
        ),
    );
    let peers = [answer_one(&listener), answer_one(&listener)];
    let out = finished(client);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{RECORDED} 8080\n::ffff:{RECORDED} 8080\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for peer in peers {
        assert_eq!(
            redirect.original_destination(peer),
            Some(SocketAddr::V4(SocketAddrV4::new(RECORDED, 8080)))
        );
    }

    // Inside the cgroup: the resolver's query arrives at the DNS socket.
    let resolver = run_in(Some(&cgroup), "getent ahostsv4 api.openai.com");
    let mut query = [0u8; 512];
    let (n, _) = dns.recv_from(&mut query).expect("a redirected DNS query");
    assert!(
        query[..n].windows(7).any(|w| w == b"\x06openai"),
        "not a query for api.openai.com"
    );
    drop(dns); // the resolver now gets an error and gives up
    let _ = finished(resolver);

    // Outside the cgroup nothing changes: the recorded address refuses.
    let out = finished(curl(None));
    assert!(
        !out.status.success(),
        "a process outside the cgroup was redirected"
    );

    // Without the hooks, the cgroup's connects are not redirected either.
    drop(redirect);
    let out = finished(curl(Some(&cgroup)));
    assert!(
        !out.status.success(),
        "the cgroup was still redirected after detaching"
    );
}
