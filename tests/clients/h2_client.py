#!/usr/bin/env python3
"""An HTTP/2 client of the OpenAI API, for the HTTP/2 capture tests: it talks to ORIGIN (the
fake provider behind an h2 front end) and lets ALPN choose the protocol.

Usage: h2_client.py MODE ORIGIN, MODE one of
  curl    curl, as the system ships it (no flag forcing h2), posts a chat completion and a
          streamed one (-N);
  httpx   httpx with http2=True, the same two requests, the second read as a stream;
  openai  the official openai SDK given an httpx client with http2=True, the same two;
  join    httpx with http2=True on one connection: a chat completion, then `ready <pid>`;
          after a line on stdin, a chat completion and a streamed one on the same connection;
  join-streaming  httpx with http2=True on one connection: a chat completion, then a
          streamed one of which it reads the first chunk, then `ready <pid>`; after a line on
          stdin, the rest of that stream, then a chat completion on the same connection;
  malformed  one connection that sends the preface and then a PING frame of 7 bytes (a
          frame size error), read until the server closes it; then what `curl` does;
  grpc    the `h2` library over the stdlib `ssl` module (so a capture sees it through the
          system libssl) speaking gRPC on one connection: a unary call
          /helloworld.Greeter/SayHello and a server-streaming call SayHelloStream, each
          with one message;
  secrets httpx with http2=True, one chat completion whose `:path` carries `?key=KEY` and
          whose headers carry `authorization: Bearer KEY` and `x-api-key: KEY` (KEY being
          OPENAI_API_KEY).
Prints one JSON line {"mode", "results": [{"stream", "http_version", "sent", "received"}]}:
the HTTP version the response came with and the request and response bodies as sent and
received (the SDK's answer text instead of the response body for `openai`). For `grpc` each
result is {"call", "http_version", "status", "sent", "received", "messages", "trailers"}
with the bodies and messages in hex and the trailers as [name, value] pairs. Reads
OPENAI_API_KEY; trusts SSL_CERT_FILE.
"""

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile

import httpx

MODEL = "gpt-4o-mini"


def body(stream, n):
    request = {"model": MODEL, "messages": [{"role": "user", "content": f"Say hello over HTTP/2 ({n})."}]}
    if stream:
        request["stream"] = True
    return json.dumps(request, separators=(",", ":"))


def headers():
    return {"authorization": f"Bearer {os.environ['OPENAI_API_KEY']}", "content-type": "application/json"}


def with_curl(origin):
    results = []
    for n, stream in enumerate([False, True]):
        sent = body(stream, n)
        with tempfile.NamedTemporaryFile() as out:
            argv = ["curl", "-sS", "--fail-with-body", "-o", out.name, "-w", "%{http_version}",
                    f"{origin}/v1/chat/completions", "-d", sent]
            for name, value in headers().items():
                argv += ["-H", f"{name}: {value}"]
            if stream:
                argv.append("-N")
            # curl says `2` or `1.1`; httpx says `HTTP/2`.
            version = "HTTP/" + subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            received = open(out.name, "rb").read().decode()
        results.append({"stream": stream, "http_version": version, "sent": sent, "received": received})
    return results


def call(client, origin, stream, n):
    sent = body(stream, n)
    url = f"{origin}/v1/chat/completions"
    if stream:
        with client.stream("POST", url, content=sent, headers=headers()) as response:
            response.raise_for_status()
            received = b"".join(response.iter_raw()).decode()
    else:
        response = client.post(url, content=sent, headers=headers())
        response.raise_for_status()
        received = response.content.decode()
    return {"stream": stream, "http_version": response.http_version, "sent": sent, "received": received}


def with_httpx(origin):
    with httpx.Client(http2=True, timeout=60.0) as client:
        return [call(client, origin, stream, n) for n, stream in enumerate([False, True])]


def with_openai(origin):
    from openai import OpenAI

    client = OpenAI(base_url=f"{origin}/v1", http_client=httpx.Client(http2=True, timeout=60.0), max_retries=0)
    messages = [{"role": "user", "content": "Say hello over HTTP/2 with the SDK."}]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    plain = {"stream": False, "http_version": raw.http_response.http_version,
             "received": raw.parse().choices[0].message.content}
    text = []
    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=messages, stream=True) as raw:
        version = raw.http_response.http_version
        for chunk in raw.parse():
            text.extend(c.delta.content or "" for c in chunk.choices)
    return [plain, {"stream": True, "http_version": version, "received": "".join(text)}]


def one_connection():
    """An h2 client that keeps its connection while the capture attaches: httpx closes a
    connection idle for 5 s by default, and attaching can take longer on a loaded machine,
    which would make the later requests open a new connection the capture sees whole."""
    return httpx.Client(http2=True, timeout=60.0, limits=httpx.Limits(keepalive_expiry=None))


def joined(origin):
    with one_connection() as client:
        results = [call(client, origin, False, 0)]
        print(f"ready {os.getpid()}", flush=True)
        sys.stdin.readline()
        results += [call(client, origin, stream, n) for n, stream in enumerate([False, True], start=1)]
        return results


def joined_streaming(origin):
    with one_connection() as client:
        results = [call(client, origin, False, 0)]
        sent = body(True, 1)
        with client.stream("POST", f"{origin}/v1/chat/completions", content=sent, headers=headers()) as response:
            response.raise_for_status()
            chunks = response.iter_raw()
            received = next(chunks)
            print(f"ready {os.getpid()}", flush=True)
            sys.stdin.readline()
            received += b"".join(chunks)
        results.append({"stream": True, "http_version": response.http_version, "sent": sent,
                        "received": received.decode()})
        results.append(call(client, origin, False, 2))
        return results


def malformed(origin):
    host, port = origin.removeprefix("https://").split(":")
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            ping = b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"\x00" * 7
            tls.sendall(preface + ping)
            try:
                while tls.recv(65536):
                    pass
            except (TimeoutError, ssl.SSLError, ConnectionError):
                pass
    return with_curl(origin)


def with_secrets(origin):
    key = os.environ["OPENAI_API_KEY"]
    sent = body(False, 0)
    with httpx.Client(http2=True, timeout=60.0) as client:
        response = client.post(f"{origin}/v1/chat/completions?key={key}", content=sent,
                               headers={**headers(), "x-api-key": key})
        response.raise_for_status()
    return [{"stream": False, "http_version": response.http_version, "sent": sent,
             "received": response.content.decode()}]


def grpc_messages(body):
    """The messages of a gRPC body: each a flag byte and a 4-byte big-endian length first."""
    out = []
    while len(body) >= 5:
        (length,) = struct.unpack(">I", body[1:5])
        out.append(body[5 : 5 + length])
        body = body[5 + length :]
    return out


def grpc_call(tls, conn, stream, authority, method, message):
    import h2.events

    sent = b"\x00" + struct.pack(">I", len(message)) + message
    conn.send_headers(stream, [(":method", "POST"), (":scheme", "https"), (":authority", authority),
                               (":path", f"/helloworld.Greeter/{method}"),
                               ("content-type", "application/grpc"), ("te", "trailers")])
    conn.send_data(stream, sent, end_stream=True)
    tls.sendall(conn.data_to_send())
    status, received, trailers, ended = None, b"", [], False
    while not ended:
        data = tls.recv(65536)
        if not data:
            raise SystemExit(f"h2_client.py: the connection closed during {method}")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[":status"]
            elif isinstance(event, h2.events.DataReceived):
                received += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = [[name, value] for name, value in event.headers]
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                ended = True
            elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                raise SystemExit(f"h2_client.py: {method} failed: {event}")
        tls.sendall(conn.data_to_send())
    return {"call": method, "http_version": "HTTP/2", "status": status, "sent": sent.hex(),
            "received": received.hex(), "messages": [m.hex() for m in grpc_messages(received)],
            "trailers": trailers}


def with_grpc(origin):
    import h2.config
    import h2.connection

    authority = origin.removeprefix("https://")
    host, port = authority.split(":")
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            if tls.selected_alpn_protocol() != "h2":
                raise SystemExit(f"h2_client.py: ALPN chose {tls.selected_alpn_protocol()!r}, not h2")
            conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            calls = [("SayHello", b"unary"), ("SayHelloStream", b"stream")]
            return [grpc_call(tls, conn, 2 * i + 1, authority, method, message)
                    for i, (method, message) in enumerate(calls)]


def main():
    mode, origin = sys.argv[1], sys.argv[2]
    modes = {"curl": with_curl, "httpx": with_httpx, "openai": with_openai, "join": joined,
             "join-streaming": joined_streaming, "malformed": malformed,
             "grpc": with_grpc, "secrets": with_secrets}
    run = modes.get(mode)
    if run is None:
        raise SystemExit(f"unknown mode {mode!r}: expected one of {', '.join(modes)}")
    print(json.dumps({"mode": mode, "results": run(origin)}), flush=True)


if __name__ == "__main__":
    main()
