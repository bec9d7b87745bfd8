#!/usr/bin/env python3
"""A real gRPC client (PyPI `grpcio`) making a unary-unary and a unary-stream call with raw bytes
(no generated code: the messages are passed through as they are).

Usage: grpc_h2.py TARGET REQUEST_HEX. TARGET is host:port; port 443 is reached over TLS trusting
SSL_CERT_FILE, any other over plain HTTP/2 (h2c). Calls /llmsim.test.Echo/Say (unary) and
/llmsim.test.Echo/Count (server streaming) with the message REQUEST_HEX. Prints one JSON object
{"unary": CALL, "stream": CALL}, each CALL {"messages": [hex...], "code", "details",
"trailing": [[key, value]...]}: a call that ends in an error status reports it the same way.
"""

import json
import os
import sys

import grpc


def identity(message):
    return message


def channel(target):
    if target.endswith(":443"):
        with open(os.environ["SSL_CERT_FILE"], "rb") as f:
            roots = f.read()
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))
    return grpc.insecure_channel(target)


def outcome(messages, call):
    return {"messages": [m.hex() for m in messages], "code": call.code().name,
            "details": call.details(),
            "trailing": [[k, v] for k, v in (call.trailing_metadata() or ())]}


def main():
    target, request = sys.argv[1], bytes.fromhex(sys.argv[2])
    with channel(target) as ch:
        say = ch.unary_unary("/llmsim.test.Echo/Say", request_serializer=identity,
                             response_deserializer=identity)
        answer, call = say.with_call(request, timeout=30)
        unary = outcome([answer], call)
        count = ch.unary_stream("/llmsim.test.Echo/Count", request_serializer=identity,
                                response_deserializer=identity)
        responses = count(request, timeout=30)
        messages = []
        try:
            for message in responses:
                messages.append(message)
        except grpc.RpcError:
            pass  # a recorded error status; outcome() reports it
        stream = outcome(messages, responses)
    print(json.dumps({"unary": unary, "stream": stream}), flush=True)


if __name__ == "__main__":
    main()
