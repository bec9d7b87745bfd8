#!/usr/bin/env python3
"""An app with roots of its own: it trusts only the CA file named by PINNED_CA_FILE and none of
SSL_CERT_FILE and friends, as apps that bundle their roots do. Opens one TLS connection to
api.openai.com:443 and prints `connected` or `rejected: <reason>`; exits 0 when connected,
3 when the certificate was refused."""

import os
import socket
import ssl
import sys


def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=os.environ["PINNED_CA_FILE"])
    try:
        with socket.create_connection(("api.openai.com", 443), timeout=30) as sock:
            with context.wrap_socket(sock, server_hostname="api.openai.com"):
                print("connected")
                return 0
    except ssl.SSLCertVerificationError as e:
        print(f"rejected: {e.verify_message}")
        return 3


if __name__ == "__main__":
    sys.exit(main())
