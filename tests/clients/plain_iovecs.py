#!/usr/bin/env python3
"""A plain-HTTP client that moves its bytes with the vectored socket calls: one chat completion
sent with `sendmsg` (head and body in two iovecs) and read with `recvmsg_into`, one sent with
`os.writev` and read with `os.readv`, each on its own connection to OPENAI_BASE_URL
(`http://HOST:PORT/v1`).

Prints one JSON object on stdout: {"client", "results": [...]}, where each result has "call",
"status" and "text" (the answer's content).
"""

import json
import os
import socket
from urllib.parse import urlsplit


def request_bytes(host, prompt):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Authorization: Bearer {os.environ.get('OPENAI_API_KEY', '')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head, body


def answer(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["choices"][0]["message"]["content"]


def main():
    url = urlsplit(os.environ["OPENAI_BASE_URL"])
    authority = url.netloc
    results = []

    with socket.create_connection((url.hostname, url.port)) as sock:
        head, body = request_bytes(authority, "Say hello to sendmsg.")
        sock.sendmsg([head, body])
        raw = b""
        while True:
            first, second = bytearray(100), bytearray(65536)
            n, _, _, _ = sock.recvmsg_into([first, second])
            if n == 0:
                break
            raw += (bytes(first) + bytes(second))[:n]
        status, text = answer(raw)
        results.append({"call": "sendmsg", "status": status, "text": text})

    with socket.create_connection((url.hostname, url.port)) as sock:
        head, body = request_bytes(authority, "Say hello to writev.")
        os.writev(sock.fileno(), [head, body])
        raw = b""
        while True:
            first, second = bytearray(100), bytearray(65536)
            n = os.readv(sock.fileno(), [first, second])
            if n == 0:
                break
            raw += (bytes(first) + bytes(second))[:n]
        status, text = answer(raw)
        results.append({"call": "writev", "status": status, "text": text})

    print(json.dumps({"client": "plain_iovecs.py", "results": results}))


if __name__ == "__main__":
    main()
