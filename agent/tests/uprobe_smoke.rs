//! Privileged smoke test of the whole kernel chain: the embedded eBPF object
//! loads, a uprobe attaches to `SSL_write_ex` in the system libssl, and the
//! plaintext of one real curl request to a local TLS server reaches userspace
//! through the ring buffer, followed by the response it read.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::Command,
    sync::Arc,
};

use llmsim_agent::{
    events::{Event, decode},
    preflight,
    probes::{Probes, Selection},
    tls_libs::Scanner,
};
use llmsim_ebpf_common::Direction;

/// Serves one HTTPS request on a loopback port with a throwaway certificate.
fn serve_one_https_request() -> (u16, std::thread::JoinHandle<()>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("self-signed cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("local addr").port();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let conn = rustls::ServerConnection::new(Arc::new(config)).expect("server connection");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).expect("read request");
            assert!(n > 0, "client closed before sending a request");
            request.extend_from_slice(&buf[..n]);
        }
        let body = b"smoke-ok";
        write!(
            tls,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("write head");
        tls.write_all(body).expect("write body");
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    (port, server)
}

#[test]
fn plaintext_of_a_real_curl_request_arrives_through_the_ring_buffer() {
    if !llmsim_tests::privileged("uprobe_smoke") {
        return;
    }
    // What a capture checks first; it also makes the syscall tracepoints reachable.
    preflight::check().expect("preflight");
    let mut probes = Probes::load().unwrap_or_else(|e| panic!("loading probes: {e:#?}"));
    let libssl = Scanner::default()
        .system_libraries()
        .into_iter()
        .find(|l| l.symbols.write_ex.is_some())
        .expect("a system libssl exporting SSL_write_ex");
    probes
        .attach_tls_library(&libssl)
        .expect("attach uprobes to libssl");
    probes
        .select(&Selection::All)
        .expect("select all processes");
    let mut ring = probes.take_events().expect("ring buffer");

    let (port, server) = serve_one_https_request();
    let marker = format!("/llmsim-smoke-{}", std::process::id());
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--insecure", "--http1.1"])
        .arg(format!("https://127.0.0.1:{port}{marker}"))
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"smoke-ok");
    server.join().expect("server thread");

    // curl has exited, so every event its probes produced is already in the ring.
    let request_line = format!("GET {marker} HTTP/1.1\r\n");
    let (mut request_ssl, mut saw_response) = (None, false);
    while let Some(item) = ring.next() {
        let Ok(Event::Data(data)) = decode(&item) else {
            continue;
        };
        match data.direction {
            Direction::Write if data.bytes.starts_with(request_line.as_bytes()) => {
                request_ssl = Some(data.ssl);
            }
            Direction::Read if Some(data.ssl) == request_ssl => {
                saw_response |= data.bytes.starts_with(b"HTTP/1.1 200 OK\r\n");
            }
            _ => {}
        }
    }
    assert!(
        request_ssl.is_some(),
        "the request line {request_line:?} never arrived"
    );
    assert!(saw_response, "the response read by curl never arrived");
    let dropped: u64 = probes
        .drop_counts()
        .expect("drop counters")
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(dropped, 0, "events were dropped");
}
