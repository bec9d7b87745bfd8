"""Posts support tickets to the triage demo served as an HTTP API (examples/triage/app.py --serve).

usage: triage_post.py URL TICKETS_JSON COUNT [CAFILE]

Posts the first ticket of TICKETS_JSON alone, then the next COUNT - 1 at once (one thread and
one connection each), to URL/triage (https with CAFILE as the only trusted CA). Prints a JSON
list, one entry per ticket in file order: its id, the status, and the exact request and
response bodies (hex), so a capture can be compared with them byte for byte.
"""

import http.client
import json
import ssl
import sys
import threading
from urllib.parse import urlsplit


def post(url, body, cafile):
    parts = urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=120)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        connection.request("POST", "/triage", body=body,
                           headers={"Content-Type": "application/json", "Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__.split("\n\n")[1])
    url, tickets_path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cafile = sys.argv[4] if len(sys.argv) == 5 else None
    with open(tickets_path, encoding="utf-8") as f:
        tickets = json.load(f)[:count]
    results = [None] * len(tickets)

    def one(i):
        sent = json.dumps(tickets[i], ensure_ascii=False).encode("utf-8")
        status, received = post(url, sent, cafile)
        results[i] = {"id": tickets[i]["id"], "status": status, "sent": sent.hex(), "received": received.hex()}

    one(0)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, len(tickets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if any(result is None for result in results):
        sys.exit("a request failed")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
