#!/usr/bin/env python3
"""A standard-library client that makes the capture lose plaintext in a known way, and says
exactly what it moved, so a test can check the capture's accounting against it.

Usage: loss_client.py copy|ring|plain-ring|table

* `copy`: three chat completions on three connections to api.openai.com, bodies of 5000, 9000
  and 12000 bytes. The first and the last are sent from an anonymous mapping that the client
  drops (`madvise(MADV_DONTNEED)`) from OpenSSL's message callback, which runs inside
  `SSL_write` once the record holding the body is encrypted: the server gets every byte, but by
  the time `SSL_write` returns the pages are gone, so the kernel cannot copy the plaintext
  (the body fits in one TLS record, so nothing is read after the drop).
* `ring`: three chat completions on one keep-alive connection, the second with a 2 MiB body,
  for a capture with a tiny ring buffer.
* `plain-ring`: `ring` over plain HTTP to the local server on 127.0.0.1:11434, whose
  plaintext the capture reads from the socket calls.
* `table`: eight threads, each streaming a chat completion on its own blocking connection at
  once, so eight `SSL_read` calls wait inside OpenSSL together, for a capture with a tiny call
  table.

Prints one JSON line: {"mode", "tls_bytes" (plaintext written plus read through TLS, or
through the plain socket),
"requests": [{"body_b64", "status", "response_b64", "events"}]}, where `events` are the `data:`
lines of a streamed answer.
"""

import base64
import json
import mmap
import ssl
import sys
import threading

from counted import Counted, body_of, head_of

HOST = "api.openai.com"
# The plain-HTTP local server of `plain-ring`.
LOCAL_SERVER = ("127.0.0.1", 11434)


def connect(ctx, blocking=False):
    """A counted connection to api.openai.com, or without `ctx` to the local plain server."""
    return Counted(ctx, HOST, address=LOCAL_SERVER, blocking=blocking)


def result(body, status, response):
    events = [line[len("data: "):] for line in response.decode("utf-8", "replace").split("\n")
              if line.startswith("data: ")]
    return {"body_b64": base64.b64encode(body).decode(), "status": status,
            "response_b64": base64.b64encode(response).decode(), "events": events}


def copy_mode(ctx):
    armed = {"map": None}

    def on_message(conn, direction, version, content_type, msg_type, data):
        mapped = armed["map"]
        if direction == "write" and mapped is not None:
            armed["map"] = None
            mapped.madvise(mmap.MADV_DONTNEED)

    ctx._msg_callback = on_message
    results, moved = [], 0
    for size, drop in ((5000, True), (9000, False), (12000, True)):
        body = body_of(size, f"copy-{size}")
        conn = connect(ctx)
        conn.send(head_of(HOST, body))
        if drop:
            mapped = mmap.mmap(-1, len(body))
            mapped.write(body)
            armed["map"] = mapped
            conn.send(memoryview(mapped))
            assert armed["map"] is None, "the message callback did not run"
        else:
            conn.send(body)
        status, response = conn.response()
        results.append(result(body, status, response))
        conn.close()
        moved += conn.moved
    return results, moved


def ring_mode(ctx):
    conn = connect(ctx)
    results = []
    for size in (3000, 2 * 1024 * 1024, 4000):
        body = body_of(size, f"ring-{size}")
        conn.send(head_of(HOST, body) + body)
        status, response = conn.response()
        results.append(result(body, status, response))
    conn.close()
    return results, conn.moved


def table_mode(ctx):
    count = 8
    barrier = threading.Barrier(count)
    results = [None] * count
    moved = [0] * count
    errors = []

    def run(i):
        try:
            body = body_of(400, f"table-{i}", stream=True)
            conn = connect(ctx, blocking=True)
            barrier.wait(timeout=30)
            conn.send(head_of(HOST, body) + body)
            status, response = conn.response()
            results[i] = result(body, status, response)
            conn.close()
            moved[i] = conn.moved
        except Exception as error:  # reported below, with the thread that failed
            errors.append(f"thread {i}: {error!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit("; ".join(errors))
    return results, sum(moved)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    modes = {"copy": copy_mode, "ring": ring_mode, "plain-ring": ring_mode, "table": table_mode}
    if mode not in modes:
        raise SystemExit(f"unknown mode {mode!r}: expected copy, ring, plain-ring or table")
    ctx = None if mode.startswith("plain-") else ssl.create_default_context()
    results, moved = modes[mode](ctx)
    print(json.dumps({"mode": mode, "tls_bytes": moved, "requests": results}), flush=True)


if __name__ == "__main__":
    main()
