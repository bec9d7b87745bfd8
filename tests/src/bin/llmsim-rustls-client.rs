//! An `OpenAI` API client on rustls, for the rustls capture tests: HTTP/1.1 over one
//! kept-alive `rustls::StreamOwned` on a blocking `TcpStream`, as a small Rust program
//! without an HTTP library would do it. It makes a chat completion and a streamed one to
//! `https://HOST/v1/chat/completions` and prints one JSON line,
//! `{"results": [{"stream", "http_version", "sent", "received"}, ...]}`, `received` being
//! the response body with the chunked framing removed; it exits 1 when a call failed.
//!
//! Usage: `llmsim-rustls-client HOST [steps]`. With `steps`, it prints `ready <pid>`, then
//! for each line on stdin (`plain` or `stream`) makes that request on a connection of its
//! own and prints its result as one JSON line; it exits at the end of stdin. Reads
//! `OPENAI_API_KEY`; trusts the certificates of the PEM file `SSL_CERT_FILE` only.

use std::{
    io::{BufRead, BufReader, Read, Write, stdin},
    net::TcpStream,
    sync::Arc,
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use serde_json::{Value, json};

type Tls = BufReader<StreamOwned<ClientConnection, TcpStream>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (host, steps) = match args.as_slice() {
        [host] => (host, false),
        [host, mode] if mode == "steps" => (host, true),
        _ => {
            eprintln!("usage: llmsim-rustls-client HOST [steps]");
            std::process::exit(2);
        }
    };
    if steps {
        println!("ready {}", std::process::id());
        for (n, line) in stdin().lines().map_while(Result::ok).enumerate() {
            let result = connect(host).map_or_else(
                |e| json!({ "error": e }),
                |mut tls| call(&mut tls, host, line == "stream", n),
            );
            println!("{result}");
        }
        return;
    }
    match run(host) {
        Ok(results) => {
            let failed = results.iter().any(|r| r.get("error").is_some());
            println!("{}", json!({ "results": results }));
            if failed {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("llmsim-rustls-client: {e}");
            std::process::exit(1);
        }
    }
}

fn run(host: &str) -> Result<Vec<Value>, String> {
    let mut tls = connect(host)?;
    Ok([false, true]
        .into_iter()
        .enumerate()
        .map(|(n, stream)| call(&mut tls, host, stream, n))
        .collect())
}

/// A TLS connection to `HOST:443`.
fn connect(host: &str) -> Result<Tls, String> {
    let bundle = std::env::var_os("SSL_CERT_FILE").ok_or("SSL_CERT_FILE is not set")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&bundle).map_err(|e| format!("{e:?}"))? {
        roots
            .add(cert.map_err(|e| format!("{e:?}"))?)
            .map_err(|e| e.to_string())?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let connection = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let socket = TcpStream::connect((host, 443)).map_err(|e| format!("connect {host}: {e}"))?;
    Ok(BufReader::new(StreamOwned::new(connection, socket)))
}

fn call(tls: &mut Tls, host: &str, stream: bool, n: usize) -> Value {
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
    let mut request = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": format!("Say hello from rustls ({n}).")}],
    });
    if stream {
        request["stream"] = Value::Bool(true);
    }
    let sent = request.to_string();
    let mut result = json!({ "stream": stream, "http_version": "HTTP/1.1", "sent": sent });
    match exchange(tls, host, &key, &sent) {
        Ok((status, received)) => {
            if status != 200 {
                result["error"] = Value::from(format!("status {status}"));
            }
            result["received"] = Value::from(String::from_utf8_lossy(&received).into_owned());
        }
        Err(e) => result["error"] = Value::from(e),
    }
    result
}

/// One request and its response: the status and the body.
fn exchange(tls: &mut Tls, host: &str, key: &str, body: &str) -> Result<(u16, Vec<u8>), String> {
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = tls.get_mut();
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .and_then(|()| stream.flush())
        .map_err(|e| format!("writing the request: {e}"))?;
    let status_line = line(tls)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        let header = line(tls)?;
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((&header, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.trim().eq_ignore_ascii_case("chunked");
        }
    }
    let mut received = Vec::new();
    if chunked {
        loop {
            let size = line(tls)?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| format!("bad chunk size {size:?}: {e}"))?;
            if size == 0 {
                while !line(tls)?.is_empty() {}
                break;
            }
            let at = received.len();
            received.resize(at + size, 0);
            tls.read_exact(&mut received[at..])
                .map_err(|e| format!("reading a chunk: {e}"))?;
            line(tls)?;
        }
    } else {
        let length = length.ok_or("a response without Content-Length or chunked framing")?;
        received.resize(length, 0);
        tls.read_exact(&mut received)
            .map_err(|e| format!("reading the body: {e}"))?;
    }
    Ok((status, received))
}

/// One CRLF-terminated line, without its end.
fn line(tls: &mut Tls) -> Result<String, String> {
    let mut line = String::new();
    tls.read_line(&mut line)
        .map_err(|e| format!("reading the response: {e}"))?;
    if !line.ends_with("\r\n") {
        return Err(format!("the response ended in a line: {line:?}"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}
