#!/usr/bin/env python3
"""A client that keeps the exact bytes of each answer: with the standard library only (no SDK
that would parse and re-serialise), it asks each provider for a JSON answer over HTTPS and prints
one JSON line {"results": [{"name", "status", "body_b64", "reads_ms"}]}, each body as the base64
of the bytes it received (after chunked framing, with no Content-Encoding asked for), and
"reads_ms" the times (ms after the request was sent) at which pieces of the body arrived.

Calls, in order: OpenAI chat completion, OpenAI embeddings, OpenAI chat completion without a key
(a 401 error body), Anthropic message, Gemini generateContent, Gemini streamGenerateContent
without alt=sse (a JSON array streamed element by element), and with alt=sse (events with CRLF
line ends), and an OpenRouter chat completion stream (which opens with an SSE comment).
"""

import base64
import http.client
import json
import os
import ssl
import time

CALLS = [
    ("openai.chat", "api.openai.com", "/v1/chat/completions",
     {"Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "")},
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello, café ☕"}]}),
    ("openai.embeddings", "api.openai.com", "/v1/embeddings",
     {"Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "")},
     {"model": "text-embedding-3-small", "input": "fidelity"}),
    ("openai.error", "api.openai.com", "/v1/chat/completions", {},
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "no key"}]}),
    ("anthropic.messages", "api.anthropic.com", "/v1/messages",
     {"x-api-key": os.environ.get("ANTHROPIC_API_KEY", ""), "anthropic-version": "2023-06-01"},
     {"model": "claude-haiku-4-5", "max_tokens": 64,
      "messages": [{"role": "user", "content": "Say hello"}]}),
    ("gemini.generateContent", "generativelanguage.googleapis.com",
     "/v1beta/models/gemini-2.5-flash:generateContent",
     {"x-goog-api-key": os.environ.get("GEMINI_API_KEY", "")},
     {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}),
    ("gemini.streamGenerateContent", "generativelanguage.googleapis.com",
     "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
     {"x-goog-api-key": os.environ.get("GEMINI_API_KEY", "")},
     {"contents": [{"role": "user", "parts": [{"text": "Say hello to a stream that runs to several chunks"}]}]}),
    ("gemini.streamGenerateContent.sse", "generativelanguage.googleapis.com",
     "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
     {"x-goog-api-key": os.environ.get("GEMINI_API_KEY", "")},
     {"contents": [{"role": "user", "parts": [{"text": "Say hello as server-sent events"}]}]}),
    ("openrouter.chat.stream", "openrouter.ai", "/api/v1/chat/completions",
     {"Authorization": "Bearer " + os.environ.get("OPENROUTER_API_KEY", "")},
     {"model": "openai/gpt-4o-mini", "stream": True,
      "messages": [{"role": "user", "content": "Say hello through OpenRouter"}]}),
]


def main():
    ctx = ssl.create_default_context()
    results = []
    for name, host, path, headers, body in CALLS:
        conn = http.client.HTTPSConnection(host, 443, context=ctx, timeout=30)
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers=dict(headers, **{"Content-Type": "application/json"}))
        sent = time.monotonic()
        response = conn.getresponse()
        data, reads_ms = b"", []
        while True:
            piece = response.read1(65536)
            if not piece:
                break
            reads_ms.append((time.monotonic() - sent) * 1000.0)
            data += piece
        conn.close()
        results.append({"name": name, "status": response.status,
                        "body_b64": base64.b64encode(data).decode(), "reads_ms": reads_ms})
    print(json.dumps({"results": results}), flush=True)


if __name__ == "__main__":
    main()
