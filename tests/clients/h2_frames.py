#!/usr/bin/env python3
"""A raw HTTP/2 client (PyPI `h2`) that reports frames as they arrive, for checks no SDK shows.

Usage:
  h2_frames.py stream URL BODY_JSON
      One POST of BODY_JSON to URL; prints one JSON object {"alpn", "status", "headers",
      "frames": [{"at_ms", "data"}], "trailers"}: each DATA frame's text and its arrival in ms
      from just before the request was sent.
  h2_frames.py concurrent URL BODIES_FILE
      One connection; every body of the JSON list in BODIES_FILE POSTed to URL, all requests
      sent before any answer is read. Prints {"alpn", "streams_open", "answers": [{"status",
      "body"}]}, the answers in request order, where streams_open is how many requests were
      open at once.
  h2_frames.py goaway URL BODY_JSON
      One POST of BODY_JSON to URL; prints a line {"first": TEXT} as soon as the first DATA
      frame arrives, and reads frames until the server closes the connection. Then prints
      {"goaways": [[error_code, last_stream_id]...], "frames": [{"at_ms", "data"}], "ended"}:
      every GOAWAY in order, the stream's DATA frames, and whether the stream ended. Frames
      are read raw (`hyperframe`), since the `h2` state machine takes nothing after a GOAWAY.

An https URL is reached over TLS offering only `h2` by ALPN, trusting SSL_CERT_FILE like any
OpenSSL client; an http URL speaks HTTP/2 with prior knowledge (h2c).
"""

import json
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import hpack
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame


def connect(url):
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    sock = socket.create_connection((parts.hostname, port), timeout=20)
    alpn = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname=parts.hostname)
        alpn = sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    authority = parts.netloc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return sock, conn, alpn, parts.scheme, authority, path


def send_post(conn, scheme, authority, path, body):
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, [
        (":method", "POST"), (":scheme", scheme), (":authority", authority), (":path", path),
        ("content-type", "application/json"), ("content-length", str(len(body))),
    ])
    conn.send_data(stream_id, body, end_stream=True)
    return stream_id


def pump(sock, conn, handle):
    """Reads until `handle` returns True for an event, or the server closes the connection."""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if handle(event):
                sock.sendall(conn.data_to_send())
                return
        sock.sendall(conn.data_to_send())


def text(headers):
    return [[k.decode(), v.decode()] for k, v in headers]


def goaway(url, body):
    sock, conn, _alpn, scheme, authority, path = connect(url)
    started = time.monotonic()
    stream_id = send_post(conn, scheme, authority, path, body)
    sock.sendall(conn.data_to_send())
    decoder = hpack.Decoder()
    out = {"goaways": [], "status": None, "frames": [], "ended": False}
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(buf[9:9 + length]))
            buf = buf[9 + length:]
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
            elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                sock.sendall(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize())
            elif isinstance(frame, GoAwayFrame):
                out["goaways"].append([frame.error_code, frame.last_stream_id])
            elif isinstance(frame, HeadersFrame) and frame.stream_id == stream_id:
                out["status"] = int(dict(decoder.decode(frame.data)).get(":status", 0))
            elif isinstance(frame, DataFrame) and frame.stream_id == stream_id and frame.data:
                text = frame.data.decode()
                out["frames"].append({"at_ms": (time.monotonic() - started) * 1e3, "data": text})
                if len(out["frames"]) == 1:
                    print(json.dumps({"first": text}), flush=True)
            if frame.stream_id == stream_id and "END_STREAM" in frame.flags:
                out["ended"] = True
    sock.close()
    return out


def one(url, body):
    sock, conn, alpn, scheme, authority, path = connect(url)
    started = time.monotonic()
    stream_id = send_post(conn, scheme, authority, path, body)
    sock.sendall(conn.data_to_send())
    out = {"alpn": alpn, "status": None, "headers": [], "frames": [], "trailers": None}

    def handle(event):
        if isinstance(event, h2.events.ResponseReceived):
            out["headers"] = text(event.headers)
            out["status"] = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived) and event.data:
            out["frames"].append({"at_ms": (time.monotonic() - started) * 1e3,
                                  "data": event.data.decode()})
        elif isinstance(event, h2.events.TrailersReceived):
            out["trailers"] = text(event.headers)
        return isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id

    pump(sock, conn, handle)
    sock.close()
    return out


def concurrent(url, bodies):
    sock, conn, alpn, scheme, authority, path = connect(url)
    # Wait for the server's SETTINGS so its stream limit is known before sending.
    pump(sock, conn, lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
    ids = [send_post(conn, scheme, authority, path, json.dumps(b).encode()) for b in bodies]
    sock.sendall(conn.data_to_send())
    answers = {i: {"status": None, "body": b""} for i in ids}
    open_streams = set(ids)
    streams_open = len(open_streams)

    def handle(event):
        if isinstance(event, h2.events.ResponseReceived):
            answers[event.stream_id]["status"] = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            answers[event.stream_id]["body"] += event.data
        elif isinstance(event, h2.events.StreamEnded):
            open_streams.discard(event.stream_id)
            return not open_streams
        return False

    pump(sock, conn, handle)
    sock.close()
    return {"alpn": alpn, "streams_open": streams_open,
            "answers": [{"status": answers[i]["status"], "body": answers[i]["body"].decode()}
                        for i in ids]}


def main():
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "stream":
        out = one(url, sys.argv[3].encode())
    elif mode == "goaway":
        out = goaway(url, sys.argv[3].encode())
    elif mode == "concurrent":
        with open(sys.argv[3]) as f:
            out = concurrent(url, json.load(f))
    else:
        raise SystemExit(f"unknown mode {mode!r}: expected stream, concurrent or goaway")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
