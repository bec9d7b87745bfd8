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
  malformed  one connection that sends the preface and then a PING frame of 7 bytes (a
          frame size error), read until the server closes it; then what `curl` does.
Prints one JSON line {"mode", "results": [{"stream", "http_version", "sent", "received"}]}:
the HTTP version the response came with and the request and response bodies as sent and
received (the SDK's answer text instead of the response body for `openai`). Reads
OPENAI_API_KEY; trusts SSL_CERT_FILE.
"""

import json
import os
import socket
import ssl
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


def joined(origin):
    with httpx.Client(http2=True, timeout=60.0) as client:
        results = [call(client, origin, False, 0)]
        print(f"ready {os.getpid()}", flush=True)
        sys.stdin.readline()
        results += [call(client, origin, stream, n) for n, stream in enumerate([False, True], start=1)]
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


def main():
    mode, origin = sys.argv[1], sys.argv[2]
    modes = {"curl": with_curl, "httpx": with_httpx, "openai": with_openai, "join": joined, "malformed": malformed}
    run = modes.get(mode)
    if run is None:
        raise SystemExit(f"unknown mode {mode!r}: expected one of {', '.join(modes)}")
    print(json.dumps({"mode": mode, "results": run(origin)}), flush=True)


if __name__ == "__main__":
    main()
