#!/usr/bin/env python3
"""An HTTP/2 server for the capture tests (the `h2` library over the stdlib `ssl` module, ALPN
h2, each connection's streams answered as they end), and a gRPC client of it (httpx with
http2=True speaking gRPC framing, so a capture sees the client through the system libssl).

Usage:
  h2_server.py serve PORT CERT KEY answers /helloworld.Greeter/SayHello with one message and
                                   /helloworld.Greeter/SayHelloStream with three, each time
                                   followed by the trailers grpc-status 0 and grpc-message; any
                                   other path with 200 and the compact JSON
                                   {"stream":ID,"request_bytes":N,"request":TEXT};
                                   prints `listening PORT` once it accepts connections.
  h2_server.py call ORIGIN         makes a unary and a server-streaming gRPC call and prints one
                                   JSON line {"results": [{"call", "http_version", "sent",
                                   "received"}]} with the request and response bodies in hex.
Messages are opaque bytes here (a real client would put protobuf in them); the framing is
gRPC's: a compressed flag byte and a 4-byte big-endian length before each message.
"""

import json
import socket
import ssl
import struct
import sys
import threading

GREETER = "/helloworld.Greeter/"


def message(payload):
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def messages(body):
    out = []
    while len(body) >= 5:
        (length,) = struct.unpack(">I", body[1:5])
        out.append(body[5 : 5 + length])
        body = body[5 + length :]
    return out


def handle(tls):
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    paths, bodies = {}, {}
    try:
        while data := tls.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    paths[event.stream_id] = dict(event.headers)[":path"]
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    respond(conn, event.stream_id, paths.pop(event.stream_id), bodies.pop(event.stream_id))
            tls.sendall(conn.data_to_send())
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        tls.close()


def respond(conn, stream, path, body):
    if not path.startswith(GREETER):
        answer = json.dumps({"stream": stream, "request_bytes": len(body), "request": body.decode()},
                            separators=(",", ":"))
        conn.send_headers(stream, [(":status", "200"), ("content-type", "application/json")])
        conn.send_data(stream, answer.encode(), end_stream=True)
        return
    names = messages(body)
    name = names[0] if names else b"nobody"
    conn.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
    count = 3 if path == GREETER + "SayHelloStream" else 1
    for i in range(count):
        conn.send_data(stream, message(b"hello %s %d" % (name, i)))
    conn.send_headers(stream, [("grpc-status", "0"), ("grpc-message", "")], end_stream=True)


def serve(port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_server(("127.0.0.1", port)) as server:
        print(f"listening {port}", flush=True)
        while True:
            raw, _ = server.accept()
            try:
                tls = ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, ConnectionError):
                raw.close()
                continue
            threading.Thread(target=handle, args=(tls,), daemon=True).start()


def call(origin):
    import httpx

    results = []
    headers = {"content-type": "application/grpc", "te": "trailers"}
    with httpx.Client(http2=True, timeout=30.0) as client:
        for name, method in [(b"unary", "SayHello"), (b"stream", "SayHelloStream")]:
            sent = message(name)
            with client.stream("POST", f"{origin}{GREETER}{method}", content=sent, headers=headers) as response:
                received = b"".join(response.iter_raw())
                results.append({"call": method, "http_version": response.http_version,
                                "sent": sent.hex(), "received": received.hex()})
    print(json.dumps({"results": results}), flush=True)


def main():
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "call":
        call(sys.argv[2])
    else:
        raise SystemExit("usage: h2_server.py serve PORT CERT KEY | call ORIGIN")


if __name__ == "__main__":
    main()
