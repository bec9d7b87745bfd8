#!/usr/bin/env python3
"""An ordinary app using the official `anthropic` Python SDK: a plain message, a streamed message,
and a tool-use round trip (the model asks for a tool, the app answers with a tool_result).

Reads ANTHROPIC_API_KEY (and ANTHROPIC_BASE_URL if set) from the environment. Prints one JSON object
on stdout: {"client", "sdk", "sdk_version", "results": [...]}, where each result has "call", "stream",
"id", "text", "finish_reason", "usage" {"input_tokens", "output_tokens"} and, for a tool call,
"tool_call" {"id", "name", "arguments"}.
"""

import json
import os

import anthropic

MODEL = os.environ.get("ANTHROPIC_MODEL", "claude-haiku-4-5")
SYSTEM = "You are a terse assistant."
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def text_of(message):
    return "".join(block.text for block in message.content if block.type == "text")


def usage_of(message):
    return {"input_tokens": message.usage.input_tokens, "output_tokens": message.usage.output_tokens}


def main():
    client = anthropic.Anthropic(timeout=60.0, max_retries=0)
    results = []

    plain = client.messages.create(model=MODEL, max_tokens=256, system=SYSTEM,
                                   messages=[{"role": "user", "content": "Say hello to the plain request."}])
    results.append({"call": "messages", "stream": False, "id": plain.id, "text": text_of(plain),
                    "finish_reason": plain.stop_reason, "usage": usage_of(plain)})

    events = 0
    with client.messages.stream(model=MODEL, max_tokens=256, system=SYSTEM,
                                messages=[{"role": "user", "content": "Say hello to the streamed request."}]) as stream:
        text = []
        for event in stream:
            events += 1
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text.append(event.delta.text)
        final = stream.get_final_message()
    results.append({"call": "messages", "stream": True, "id": final.id, "text": "".join(text),
                    "finish_reason": final.stop_reason, "events": events, "usage": usage_of(final)})

    question = [{"role": "user", "content": "What is the weather in Paris? Please use the tool."}]
    asked = client.messages.create(model=MODEL, max_tokens=256, tools=[WEATHER_TOOL], messages=question)
    tool_use = next(block for block in asked.content if block.type == "tool_use")
    results.append({"call": "messages", "stream": False, "id": asked.id, "text": text_of(asked),
                    "finish_reason": asked.stop_reason, "usage": usage_of(asked),
                    "tool_call": {"id": tool_use.id, "name": tool_use.name, "arguments": tool_use.input}})

    followup = question + [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in asked.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                      "content": "Sunny and 21 degrees."}]},
    ]
    answered = client.messages.create(model=MODEL, max_tokens=256, tools=[WEATHER_TOOL], messages=followup)
    results.append({"call": "messages", "stream": False, "id": answered.id, "text": text_of(answered),
                    "finish_reason": answered.stop_reason, "usage": usage_of(answered)})

    print(json.dumps({"client": "anthropic_messages.py", "sdk": "anthropic-python",
                      "sdk_version": anthropic.__version__, "results": results}))


if __name__ == "__main__":
    main()
