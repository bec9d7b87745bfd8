#!/usr/bin/env python3
"""An ordinary app using the official `openai` Python SDK, driven step by step on stdin, so a test
can attach a capture to it while it runs, or kill something between two requests.

Prints `ready <pid>` once the SDK is imported and the client built. Then, for each line read on
stdin: `plain` makes a chat completion, `stream` a streamed one (with a usage chunk), and each
prints one JSON line {"step", "call", "stream", "id", "text", "finish_reason", "usage"}; `quit` or
end of input exits 0. Every line is flushed at once. Reads OPENAI_API_KEY (and OPENAI_BASE_URL).
"""

import json
import os
import sys

from openai import OpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


def plain(client, step):
    messages = [{"role": "user", "content": f"Say hello to plain step {step}."}]
    reply = client.chat.completions.create(model=MODEL, messages=messages)
    choice = reply.choices[0]
    return {
        "id": reply.id,
        "text": choice.message.content,
        "finish_reason": choice.finish_reason,
        "usage": {"input_tokens": reply.usage.prompt_tokens, "output_tokens": reply.usage.completion_tokens},
    }


def stream(client, step):
    messages = [{"role": "user", "content": f"Say hello to streamed step {step}, word by word."}]
    chunks = client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish, chunk_id = [], None, None, None
    for chunk in chunks:
        chunk_id = chunk.id
        if chunk.usage is not None:
            usage = {"input_tokens": chunk.usage.prompt_tokens, "output_tokens": chunk.usage.completion_tokens}
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    return {"id": chunk_id, "text": "".join(text), "finish_reason": finish, "usage": usage}


def main():
    client = OpenAI(timeout=60.0, max_retries=0)
    print(f"ready {os.getpid()}", flush=True)
    step = 0
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command not in ("plain", "stream"):
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
            continue
        step += 1
        result = (plain if command == "plain" else stream)(client, step)
        result.update({"step": step, "call": "chat.completions", "stream": command == "stream"})
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
