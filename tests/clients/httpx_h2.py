#!/usr/bin/env python3
"""Ordinary HTTP/2 apps: httpx with `http2=True`, and the official `openai` Python SDK given an
HTTP/2 client (its own httpx, `httpx2`), each making one plain and one streamed chat completion,
then the same calls over HTTP/1.1 for comparison.

Reads OPENAI_API_KEY from the environment. Prints one JSON object {"results": [...]}, each
result {"client", "http2", "stream", "http_version", "status", "body"}: the body as the raw
text received, and for the SDK also "text", the answer it parsed.
"""

import json
import os

import httpx
import httpx2
from openai import OpenAI

URL = "https://api.openai.com/v1/chat/completions"
MODEL = "gpt-4o-mini"


def request(stream):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "h2 stream" if stream else "h2 plain"}]}
    if stream:
        body["stream"] = True
    return body


def with_httpx(http2):
    results = []
    headers = {"authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    with httpx.Client(http1=not http2, http2=http2, timeout=60.0) as client:
        plain = client.post(URL, json=request(False), headers=headers)
        results.append({"client": "httpx", "http2": http2, "stream": False,
                        "http_version": plain.http_version, "status": plain.status_code,
                        "body": plain.content.decode()})
        with client.stream("POST", URL, json=request(True), headers=headers) as streamed:
            body = b"".join(streamed.iter_raw())
            results.append({"client": "httpx", "http2": http2, "stream": True,
                            "http_version": streamed.http_version,
                            "status": streamed.status_code, "body": body.decode()})
    return results


def with_sdk(http2):
    results = []
    http_client = httpx2.Client(http1=not http2, http2=http2, timeout=60.0)
    client = OpenAI(http_client=http_client, max_retries=0)
    messages = request(False)["messages"]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    parsed = raw.parse()
    results.append({"client": "openai", "http2": http2, "stream": False,
                    "http_version": raw.http_version, "status": raw.status_code,
                    "body": raw.content.decode(), "text": parsed.choices[0].message.content})
    messages = request(True)["messages"]
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=messages, stream=True
    ) as streamed:
        body = b"".join(streamed.iter_bytes())
        results.append({"client": "openai", "http2": http2, "stream": True,
                        "http_version": streamed.http_version, "status": streamed.status_code,
                        "body": body.decode()})
    http_client.close()
    return results


def main():
    results = []
    for http2 in (True, False):
        results += with_httpx(http2)
        results += with_sdk(http2)
    print(json.dumps({"results": results}), flush=True)


if __name__ == "__main__":
    main()
