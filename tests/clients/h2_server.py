#!/usr/bin/env python3
"""An HTTP/2 server for the capture tests: the `h2` library over the stdlib `ssl` module, ALPN
h2, each connection's streams answered as they end. (gRPC calls are captured against a real
grpcio server instead: tests/clients/grpc_server.py.)

Usage: h2_server.py PORT CERT KEY  answers every request with 200 and the compact JSON
                                   {"stream":ID,"request_bytes":N,"request":TEXT};
                                   prints `listening PORT` once it accepts connections.
"""

import json
import socket
import ssl
import sys
import threading


def handle(tls):
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    bodies = {}
    try:
        while data := tls.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    respond(conn, event.stream_id, bodies.pop(event.stream_id))
            tls.sendall(conn.data_to_send())
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        tls.close()


def respond(conn, stream, body):
    answer = json.dumps({"stream": stream, "request_bytes": len(body), "request": body.decode()},
                        separators=(",", ":"))
    conn.send_headers(stream, [(":status", "200"), ("content-type", "application/json")])
    conn.send_data(stream, answer.encode(), end_stream=True)


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


def main():
    if len(sys.argv) != 4:
        raise SystemExit("usage: h2_server.py PORT CERT KEY")
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
