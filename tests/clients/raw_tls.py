#!/usr/bin/env python3
"""A TLS client that is not an HTTP/1.1 client: it connects to HOST:443 (default api.openai.com)
with the trusted CAs of SSL_CERT_FILE and writes something else over the encrypted connection,
so a capture sees plaintext that is not HTTP/1.1.

Usage: raw_tls.py garbage|http2 [HOST]. `garbage` writes random-looking binary and text junk;
`http2` writes the HTTP/2 connection preface and an empty SETTINGS frame. Either way it then
reads until the server closes or 5 s pass, and prints one JSON line {"mode", "host", "sent", "received"}.
"""

import json
import os
import socket
import ssl
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "garbage"
    host = sys.argv[2] if len(sys.argv) > 2 else "api.openai.com"
    if mode == "garbage":
        payload = b"\x16\x03\x01 not http at all \x00\xff\xfe" + os.urandom(64) + b"\r\n\r\n"
    elif mode == "http2":
        payload = PREFACE
    else:
        raise SystemExit(f"unknown mode {mode!r}: expected garbage or http2")
    ctx = ssl.create_default_context()
    if mode == "http2":
        ctx.set_alpn_protocols(["h2"])
    received = 0
    with socket.create_connection((host, 443), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(payload)
            try:
                while True:
                    data = tls.recv(65536)
                    if not data:
                        break
                    received += len(data)
            except (TimeoutError, ssl.SSLError, ConnectionError):
                pass
    print(json.dumps({"mode": mode, "host": host, "sent": len(payload), "received": received}), flush=True)


if __name__ == "__main__":
    main()
