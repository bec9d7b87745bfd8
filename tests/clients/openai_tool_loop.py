#!/usr/bin/env python3
"""An ordinary agent loop using the official `openai` Python SDK's chat completions, every call
streamed (with the final usage chunk).

The app keeps one growing conversation. For each city it asks the model about the weather; the
model streams a tool call, the app runs its local `get_weather` tool and sends a `tool` message
back, and the model answers in text. After the last city that text is the final answer: six
streamed calls, three of them tool calls.

With TOOL_RESULT_STAMP=1 the tool's results also carry the time the reading was taken and a
random reading id, so they differ on every run.

Reads OPENAI_API_KEY (and OPENAI_BASE_URL if set) from the environment. Prints one JSON object on
stdout: {"client", "sdk", "sdk_version", "results": [...]}, where each result has "call",
"stream", "id", "text" (None for a tool call), "finish_reason", "chunks", "usage"
{"input_tokens", "output_tokens"}, and for a tool call "tool_call" {"id", "name", "arguments"}
and "tool_result" (what the app sent back).
"""

import datetime
import json
import os
import secrets

import openai
from openai import OpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
CITIES = ["Paris", "Berlin", "Rome"]
STAMP = os.environ.get("TOOL_RESULT_STAMP") == "1"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def get_weather(city):
    reading = f"Sunny and 21 degrees in {city}."
    if STAMP:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        reading += f" Observed at {now}, reading {secrets.token_hex(8)}."
    return reading


def streamed_call(client, messages):
    """One streamed call, folded into (result, assistant message to append)."""
    text, calls, usage, finish, chunk_id, chunks = [], {}, None, None, None, 0
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL],
                                                stream=True, stream_options={"include_usage": True}):
        chunks += 1
        chunk_id = chunk.id
        if chunk.usage is not None:
            usage = {"input_tokens": chunk.usage.prompt_tokens, "output_tokens": chunk.usage.completion_tokens}
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                text.append(delta.content)
            for call in delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                if call.id:
                    slot["id"] = call.id
                if call.function and call.function.name:
                    slot["name"] = call.function.name
                if call.function and call.function.arguments:
                    slot["arguments"] += call.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    result = {"call": "chat.completions", "stream": True, "id": chunk_id, "text": None if calls else "".join(text),
              "finish_reason": finish, "chunks": chunks, "usage": usage}
    if calls:
        call = calls[min(calls)]
        result["tool_call"] = {"id": call["id"], "name": call["name"], "arguments": json.loads(call["arguments"])}
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(calls.items())]}
    else:
        message = {"role": "assistant", "content": "".join(text)}
    return result, message


def main():
    client = OpenAI(timeout=60.0, max_retries=0)
    results = []
    messages = []
    for city in CITIES:
        messages.append({"role": "user", "content": f"What is the weather in {city}? Please use the tool."})
        asked, message = streamed_call(client, messages)
        call = asked["tool_call"]
        output = get_weather(call["arguments"].get("city", city))
        asked["tool_result"] = output
        results.append(asked)
        messages.append(message)
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
        answered, message = streamed_call(client, messages)
        assert "tool_call" not in answered, "expected a text answer to the tool result"
        results.append(answered)
        messages.append(message)

    print(json.dumps({"client": "openai_tool_loop.py", "sdk": "openai-python", "sdk_version": openai.__version__,
                      "results": results}))


if __name__ == "__main__":
    main()
