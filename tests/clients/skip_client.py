#!/usr/bin/env python3
"""A standard-library client with one connection nobody asked to record and one that is, in
the same process, saying exactly what each moved, so a test can check that the capture skipped
the first in the kernel and recorded the second byte for byte.

It connects to https://localhost (a host the default filter does not record) and finishes the
TLS handshake, makes one chat completion on its own connection to api.openai.com, then makes
three chat completions on the localhost connection (bodies of 3000 bytes, 1 MiB and 4000 bytes).

Prints one JSON line: {"unwanted_bytes", "unwanted_requests", "wanted_bytes", "wanted":
{"body_b64", "status", "response_b64"}}, where the byte counts are the plaintext each
connection wrote plus read through TLS.
"""

import base64
import json
import os
import socket
import ssl

UNWANTED = "localhost"
WANTED = "api.openai.com"


def body_of(size, tag):
    """A chat completion request body of exactly `size` bytes."""
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": tag + " "}]}
    pad = size - len(json.dumps(base, separators=(",", ":")))
    base["messages"][0]["content"] = tag + " " + "x" * pad
    data = json.dumps(base, separators=(",", ":")).encode()
    assert len(data) == size, (len(data), size)
    return data


class Counted:
    """A TLS connection to `host`:443 that counts the plaintext it moves."""

    def __init__(self, ctx, host):
        self.host = host
        raw = socket.create_connection((host, 443), timeout=30)
        self.tls = ctx.wrap_socket(raw, server_hostname=host)
        self.moved = 0
        self.buffer = b""

    def request(self, body):
        key = os.environ.get("OPENAI_API_KEY", "")
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.tls.sendall(head + body)
        self.moved += len(head) + len(body)
        return self.response()

    def recv_more(self):
        data = self.tls.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.moved += len(data)
        self.buffer += data

    def response(self):
        """One response: (status, body bytes after chunked framing)."""
        while b"\r\n\r\n" not in self.buffer:
            self.recv_more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:])}
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buffer) < n:
                self.recv_more()
            body, self.buffer = self.buffer[:n], self.buffer[n:]
            return status, body
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                self.recv_more()
            size_line, rest = self.buffer.split(b"\r\n", 1)
            n = int(size_line.split(b";")[0], 16)
            while len(rest) < n + 2:
                self.recv_more()
                size_line, rest = self.buffer.split(b"\r\n", 1)
            body += rest[:n]
            self.buffer = rest[n + 2:]
            if n == 0:
                return status, body


def main():
    ctx = ssl.create_default_context()
    unwanted = Counted(ctx, UNWANTED)
    wanted = Counted(ctx, WANTED)
    body = body_of(5000, "wanted")
    status, response = wanted.request(body)
    wanted.tls.close()
    sizes = (3000, 1024 * 1024, 4000)
    for size in sizes:
        got, _ = unwanted.request(body_of(size, f"unwanted-{size}"))
        if got != 200:
            raise SystemExit(f"localhost answered {got}")
    unwanted.tls.close()
    print(json.dumps({
        "unwanted_bytes": unwanted.moved,
        "unwanted_requests": len(sizes),
        "wanted_bytes": wanted.moved,
        "wanted": {"body_b64": base64.b64encode(body).decode(), "status": status,
                   "response_b64": base64.b64encode(response).decode()},
    }), flush=True)


if __name__ == "__main__":
    main()
