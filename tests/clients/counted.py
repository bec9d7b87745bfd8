"""Shared by the standard-library clients whose tests check the capture's byte accounting
(`loss_client.py`, `skip_client.py`): chat completion bodies of an exact size, and an HTTP/1.1
connection that counts the plaintext it moves."""

import json
import os
import socket


def body_of(size, tag, stream=False):
    """A chat completion request body of exactly `size` bytes."""
    base = {"model": "gpt-4o-mini", "stream": stream,
            "messages": [{"role": "user", "content": tag + " "}]}
    pad = size - len(json.dumps(base, separators=(",", ":")))
    if pad < 0:
        raise SystemExit(f"body size {size} is too small")
    base["messages"][0]["content"] = tag + " " + "x" * pad
    data = json.dumps(base, separators=(",", ":")).encode()
    assert len(data) == size, (len(data), size)
    return data


def head_of(host, body):
    """The head of a chat completion POST of `body` to `host`, with the environment's key."""
    key = os.environ.get("OPENAI_API_KEY", "")
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()


class Counted:
    """A TLS connection to `host`:443 (or, without a context, a plain one to `address`) that
    counts the plaintext it moves; with `sni=False` its handshake names no server, as a
    client connecting to an address does (`ctx` must not check host names then)."""

    def __init__(self, ctx, host, address=None, blocking=False, sni=True):
        self.host = host
        if ctx is None:
            self.tls = socket.create_connection(address, timeout=30)
        else:
            raw = socket.create_connection((host, 443), timeout=30)
            self.tls = ctx.wrap_socket(raw, server_hostname=host if sni else None)
        if blocking:
            # Without a timeout Python blocks inside SSL_read rather than polling outside it.
            self.tls.settimeout(None)
        self.moved = 0
        self.buffer = b""

    def send(self, data):
        self.tls.sendall(data)
        self.moved += len(data)

    def request(self, body):
        """Sends a chat completion of `body`; its response."""
        self.send(head_of(self.host, body) + body)
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

    def close(self):
        self.tls.close()
