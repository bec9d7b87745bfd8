#!/usr/bin/env python3
"""An ordinary app using the official `ollama` Python client: one streamed `/api/chat` (NDJSON)
and one whole `/api/generate`.

Reads OLLAMA_HOST (like any ollama app) from the environment. Prints one JSON object on stdout:
{"client", "sdk", "results": [...]}, where each result has "call", "stream", "text", "lines",
"done_reason", "usage" {"input_tokens", "output_tokens"} and, for the stream, "arrivals_ms":
when each line arrived, in ms after the request was sent.
"""

import json
import os
import time

import ollama

MODEL = os.environ.get("OLLAMA_MODEL", "llama3.2")


def main():
    client = ollama.Client(timeout=60.0)
    results = []

    text, lines, last, arrivals = [], 0, None, []
    started = time.monotonic()
    for part in client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello to the streamed chat, word by word."}],
        stream=True,
    ):
        lines += 1
        arrivals.append(round((time.monotonic() - started) * 1000, 3))
        text.append(part.message.content or "")
        last = part
    results.append({
        "call": "chat",
        "stream": True,
        "text": "".join(text),
        "lines": lines,
        "done_reason": last.done_reason,
        "usage": {"input_tokens": last.prompt_eval_count, "output_tokens": last.eval_count},
        "arrivals_ms": arrivals,
    })

    whole = client.generate(model=MODEL, prompt="Say hello to the whole generate request.", stream=False)
    results.append({
        "call": "generate",
        "stream": False,
        "text": whole.response,
        "lines": 1,
        "done_reason": whole.done_reason,
        "usage": {"input_tokens": whole.prompt_eval_count, "output_tokens": whole.eval_count},
    })

    print(json.dumps({"client": "ollama_chat.py", "sdk": "ollama-python", "results": results}))


if __name__ == "__main__":
    main()
