#!/usr/bin/env python3
"""An ordinary app using the official `openai` Python SDK: one plain and one streamed chat completion.

Reads OPENAI_API_KEY (and, like any openai app, OPENAI_BASE_URL if set) from the environment.
Prints one JSON object on stdout: {"client", "sdk", "sdk_version", "results": [...]}, where each
result has "call", "stream", "id", "text", "finish_reason" and "usage" {"input_tokens", "output_tokens"}.
"""

import json
import os

import openai
from openai import OpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


def main():
    client = OpenAI(timeout=60.0, max_retries=0)
    messages = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Say hello to the plain request."},
    ]
    results = []

    plain = client.chat.completions.create(model=MODEL, messages=messages)
    choice = plain.choices[0]
    results.append({
        "call": "chat.completions",
        "stream": False,
        "id": plain.id,
        "text": choice.message.content,
        "finish_reason": choice.finish_reason,
        "usage": {"input_tokens": plain.usage.prompt_tokens, "output_tokens": plain.usage.completion_tokens},
    })

    messages[-1] = {"role": "user", "content": "Say hello to the streamed request, word by word."}
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish, chunk_id, chunks = [], None, None, None, 0
    for chunk in stream:
        chunks += 1
        chunk_id = chunk.id
        if chunk.usage is not None:
            usage = {"input_tokens": chunk.usage.prompt_tokens, "output_tokens": chunk.usage.completion_tokens}
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    results.append({
        "call": "chat.completions",
        "stream": True,
        "id": chunk_id,
        "text": "".join(text),
        "finish_reason": finish,
        "chunks": chunks,
        "usage": usage,
    })

    print(json.dumps({"client": "openai_chat.py", "sdk": "openai-python", "sdk_version": openai.__version__,
                      "results": results}))


if __name__ == "__main__":
    main()
