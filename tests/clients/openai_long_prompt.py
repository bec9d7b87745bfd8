#!/usr/bin/env python3
"""An ordinary app using the official `openai` Python SDK to send one long-context prompt: a
single user message of at least LLMSIM_PROMPT_BYTES bytes (default 4 MiB + 1), made of varied
words so no layer can compress or dedupe it away, in one plain chat completion.

Prints one JSON object on stdout: {"client", "sdk", "sdk_version", "results": [...]} like
openai_chat.py, where the result also has "prompt_chars" and "prompt_sha256" (of the UTF-8
message content as sent).
"""

import hashlib
import json
import os
import random

import openai
from openai import OpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
         "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
         "uniform", "victor", "whiskey", "x-ray", "yankee", "zulu", "\u00e9t\u00e9", "\u65e5\u672c",
         "line\nbreak", "quote\"d", "tab\there"]


def long_prompt(min_bytes):
    rng = random.Random()
    # `size` is the joined length: each word adds itself and one separator,
    # and the first word has none.
    parts, size = [], -1
    while size < min_bytes:
        word = f"{rng.choice(WORDS)}{rng.randrange(1_000_000)}"
        parts.append(word)
        size += len(word.encode()) + 1
    return " ".join(parts)


def main():
    min_bytes = int(os.environ.get("LLMSIM_PROMPT_BYTES", str(4 * 1024 * 1024 + 1)))
    prompt = long_prompt(min_bytes)
    client = OpenAI(timeout=60.0, max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Summarise the document."}, {"role": "user", "content": prompt}],
    )
    choice = reply.choices[0]
    result = {
        "call": "chat.completions",
        "stream": False,
        "id": reply.id,
        "text": choice.message.content,
        "finish_reason": choice.finish_reason,
        "usage": {"input_tokens": reply.usage.prompt_tokens, "output_tokens": reply.usage.completion_tokens},
        "prompt_chars": len(prompt),
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
    }
    print(json.dumps({"client": "openai_long_prompt.py", "sdk": "openai-python",
                      "sdk_version": openai.__version__, "results": [result]}))


if __name__ == "__main__":
    main()
