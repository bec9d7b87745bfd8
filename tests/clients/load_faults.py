#!/usr/bin/env python3
"""An ordinary app using the official `openai` and `anthropic` Python SDKs, as a load test
would drive it against a provider that fails now and then.

`retries N`: N plain chat completions with the SDK's own retries (max_retries=6).
`cut`: one streamed chat completion with no retries, reading until the stream ends or fails.
`overloaded`: one Anthropic message with no retries.

Prints one JSON object on stdout: the answers, or the chunks read and the error the SDK raised
(its class name, status and body).
"""

import json
import sys

import anthropic
import openai


def retries(count):
    client = openai.OpenAI(timeout=30.0, max_retries=6)
    answers = []
    for _ in range(count):
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}]
        )
        answers.append(reply.choices[0].message.content)
    return {"answers": answers}


def cut():
    client = openai.OpenAI(timeout=30.0, max_retries=0)
    chunks = []
    try:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream hi"}], stream=True
        )
        for chunk in stream:
            chunks.append(chunk.choices[0].delta.content if chunk.choices else None)
    except Exception as e:  # the SDK's error is what the test looks at
        return {"chunks": chunks, "error": type(e).__name__, "message": str(e)}
    return {"chunks": chunks, "error": None}


def overloaded():
    client = anthropic.Anthropic(timeout=30.0, max_retries=0)
    try:
        client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=64,
            messages=[{"role": "user", "content": "Say hi"}],
        )
    except anthropic.APIStatusError as e:
        return {"error": type(e).__name__, "status": e.status_code, "body": e.body}
    return {"error": None}


def main():
    mode = sys.argv[1]
    if mode == "retries":
        result = retries(int(sys.argv[2]))
    elif mode == "cut":
        result = cut()
    elif mode == "overloaded":
        result = overloaded()
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
