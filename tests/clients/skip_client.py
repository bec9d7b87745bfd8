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
import ssl

from counted import Counted, body_of

UNWANTED = "localhost"
WANTED = "api.openai.com"


def main():
    ctx = ssl.create_default_context()
    unwanted = Counted(ctx, UNWANTED)
    wanted = Counted(ctx, WANTED)
    body = body_of(5000, "wanted")
    status, response = wanted.request(body)
    wanted.close()
    sizes = (3000, 1024 * 1024, 4000)
    for size in sizes:
        got, _ = unwanted.request(body_of(size, f"unwanted-{size}"))
        if got != 200:
            raise SystemExit(f"localhost answered {got}")
    unwanted.close()
    print(json.dumps({
        "unwanted_bytes": unwanted.moved,
        "unwanted_requests": len(sizes),
        "wanted_bytes": wanted.moved,
        "wanted": {"body_b64": base64.b64encode(body).decode(), "status": status,
                   "response_b64": base64.b64encode(response).decode()},
    }), flush=True)


if __name__ == "__main__":
    main()
