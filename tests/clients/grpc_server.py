#!/usr/bin/env python3
"""A real gRPC server (PyPI `grpcio`) for the HTTP/2 capture tests, with a generic handler (no
generated code: messages are opaque bytes, passed through as they are).

Usage: grpc_server.py PORT serves plain HTTP/2 (h2c) on 127.0.0.1:PORT, for a TLS front end
(nghttpx, backend `proto=h2`) to put it under a provider's host name. Prints `listening PORT`
once it accepts calls.
  /helloworld.Greeter/SayHello        answers the message M with `hello M 0`;
  /helloworld.Greeter/SayHelloStream  answers with three messages, `hello M 0` to `hello M 2`;
each call ends with status OK and the trailing metadata `x-greeting: done`.
"""

import sys
import threading

from concurrent import futures

import grpc


def identity(message):
    return message


def say_hello(request, context):
    context.set_trailing_metadata((("x-greeting", "done"),))
    return b"hello %s 0" % request


def say_hello_stream(request, context):
    context.set_trailing_metadata((("x-greeting", "done"),))
    for i in range(3):
        yield b"hello %s %d" % (request, i)


def main():
    port = int(sys.argv[1])
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(
            say_hello, request_deserializer=identity, response_serializer=identity),
        "SayHelloStream": grpc.unary_stream_rpc_method_handler(
            say_hello_stream, request_deserializer=identity, response_serializer=identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("helloworld.Greeter", handlers),))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"grpc_server.py: cannot listen on 127.0.0.1:{port}")
    server.start()
    print(f"listening {port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
