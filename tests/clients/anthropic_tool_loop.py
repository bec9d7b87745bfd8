#!/usr/bin/env python3
"""An ordinary agent loop using the official `anthropic` Python SDK, every call streamed.

The app keeps one growing conversation. For each city it asks the model about the weather; the
model answers with a tool_use block, the app runs its local `get_weather` tool and sends the
tool_result back, and the model answers in text. After the last city that text is the final
answer. So a run makes six streamed calls: three tool_use turns, each followed by a tool_result
turn, every request carrying the whole conversation so far.

With TOOL_RESULT_STAMP=1 the tool's results also carry the time the reading was taken and a
random reading id, as real tools' results do, so they differ on every run.

Reads ANTHROPIC_API_KEY (and ANTHROPIC_BASE_URL if set) from the environment. Prints one JSON
object on stdout: {"client", "sdk", "sdk_version", "results": [...]}, where each result has "call",
"stream", "id", "text" (None for a tool_use turn), "finish_reason", "events", "usage"
{"input_tokens", "output_tokens"}, "tool_call" {"id", "name", "arguments"} for a tool_use turn and
"tool_result" (what the app sent back) for it.
"""

import datetime
import json
import os
import secrets

import anthropic

MODEL = os.environ.get("ANTHROPIC_MODEL", "claude-haiku-4-5")
SYSTEM = "You are a terse weather assistant."
CITIES = ["Paris", "Berlin", "Rome"]
STAMP = os.environ.get("TOOL_RESULT_STAMP") == "1"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def get_weather(city):
    """The local tool: a deterministic reading, stamped with the time when TOOL_RESULT_STAMP=1."""
    reading = f"Sunny and 21 degrees in {city}."
    if STAMP:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        reading += f" Observed at {now}, reading {secrets.token_hex(8)}."
    return reading


def streamed_call(client, messages):
    """One streamed call; returns the final message and the number of stream events."""
    events = 0
    with client.messages.stream(model=MODEL, max_tokens=256, system=SYSTEM, tools=[WEATHER_TOOL],
                                messages=messages) as stream:
        for _event in stream:
            events += 1
        final = stream.get_final_message()
    return final, events


def result_of(message, events):
    text = "".join(block.text for block in message.content if block.type == "text")
    return {"call": "messages", "stream": True, "id": message.id,
            "text": None if message.stop_reason == "tool_use" else text,
            "finish_reason": message.stop_reason, "events": events,
            "usage": {"input_tokens": message.usage.input_tokens,
                      "output_tokens": message.usage.output_tokens}}


def main():
    client = anthropic.Anthropic(timeout=60.0, max_retries=0)
    results = []
    messages = []
    for city in CITIES:
        messages.append({"role": "user", "content": f"What is the weather in {city}? Please use the tool."})
        asked, events = streamed_call(client, messages)
        tool_use = next(block for block in asked.content if block.type == "tool_use")
        output = get_weather(tool_use.input.get("city", city))
        result = result_of(asked, events)
        result["tool_call"] = {"id": tool_use.id, "name": tool_use.name, "arguments": tool_use.input}
        result["tool_result"] = output
        results.append(result)
        messages.append({"role": "assistant",
                         "content": [block.model_dump(exclude_none=True) for block in asked.content]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                                      "content": output}]})
        answered, events = streamed_call(client, messages)
        assert answered.stop_reason != "tool_use", "expected a text answer to the tool result"
        results.append(result_of(answered, events))
        messages.append({"role": "assistant",
                         "content": [block.model_dump(exclude_none=True) for block in answered.content]})

    print(json.dumps({"client": "anthropic_tool_loop.py", "sdk": "anthropic-python",
                      "sdk_version": anthropic.__version__, "results": results}))


if __name__ == "__main__":
    main()
