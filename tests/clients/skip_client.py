#!/usr/bin/env python3
"""A standard-library client with two connections nobody asked to record and one that is, in
the same process, saying exactly what each moved, so a test can check that the capture skipped
the first two in the kernel and recorded the third byte for byte.

It connects to https://localhost (a host the default filter does not record) and finishes the
TLS handshake; opens a second connection to localhost whose handshake names no server (no
SNI, as a client connecting to an address sends) and makes one chat completion on it (a
2000-byte body); makes one chat completion on its own connection to api.openai.com; waits
0.2 s, so that the capture has read the SNI-less connection's first exchange; then makes chat
completions of 3000 bytes, 1 MiB and 4000 bytes on the first connection and of 1 MiB and
3000 bytes on the second.

Prints one JSON line: {"unwanted_bytes", "unwanted_requests", "wanted_bytes", "wanted":
{"body_b64", "status", "response_b64"}}, where the byte counts are the plaintext the
connections wrote plus read through TLS (both unwanted ones together).
"""

import base64
import json
import ssl
import time

from counted import Counted, body_of

UNWANTED = "localhost"
WANTED = "api.openai.com"


def exchange(conn, size):
    got, _ = conn.request(body_of(size, f"unwanted-{size}"))
    if got != 200:
        raise SystemExit(f"localhost answered {got}")


def main():
    ctx = ssl.create_default_context()
    bare = ssl.create_default_context()
    bare.check_hostname = False
    unwanted = Counted(ctx, UNWANTED)
    by_address = Counted(bare, UNWANTED, sni=False)
    exchange(by_address, 2000)
    wanted = Counted(ctx, WANTED)
    body = body_of(5000, "wanted")
    status, response = wanted.request(body)
    wanted.close()
    time.sleep(0.2)
    sizes = (3000, 1024 * 1024, 4000)
    for size in sizes:
        exchange(unwanted, size)
    later = (1024 * 1024, 3000)
    for size in later:
        exchange(by_address, size)
    unwanted.close()
    by_address.close()
    print(json.dumps({
        "unwanted_bytes": unwanted.moved + by_address.moved,
        "unwanted_requests": len(sizes) + 1 + len(later),
        "wanted_bytes": wanted.moved,
        "wanted": {"body_b64": base64.b64encode(body).decode(), "status": status,
                   "response_b64": base64.b64encode(response).decode()},
    }), flush=True)


if __name__ == "__main__":
    main()
