#!/usr/bin/env python3
"""An ordinary app using the official `openai` Python SDK's Responses API only: a plain response,
a streamed response, and a streamed function-call round trip (the model asks for a function,
the app runs it and sends a function_call_output, the model answers, streamed).

Reads OPENAI_API_KEY (and OPENAI_BASE_URL if set) from the environment. Prints one JSON object on
stdout: {"client", "sdk", "sdk_version", "results": [...]}, where each result has "call", "stream",
"id", "text" (None for a function call), "finish_reason", "usage" {"input_tokens",
"output_tokens"}, "events" for streams and, for a function call, "tool_call" {"id", "name",
"arguments"}.
"""

import json
import os

import openai
from openai import OpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
INSTRUCTIONS = "You are a terse assistant."
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
    "strict": True,
}


def usage_of(response):
    return {"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens}


def streamed(client, **kwargs):
    """One streamed Responses call; returns its result and the final response."""
    text, final, events = [], None, 0
    for event in client.responses.create(model=MODEL, instructions=INSTRUCTIONS, stream=True, **kwargs):
        events += 1
        if event.type == "response.output_text.delta":
            text.append(event.delta)
        elif event.type == "response.completed":
            final = event.response
    calls = [item for item in final.output if item.type == "function_call"]
    result = {"call": "responses", "stream": True, "id": final.id, "text": None if calls else "".join(text),
              "finish_reason": final.status, "events": events, "usage": usage_of(final)}
    if calls:
        result["tool_call"] = {"id": calls[0].call_id, "name": calls[0].name,
                               "arguments": json.loads(calls[0].arguments)}
    return result, final


def main():
    client = OpenAI(timeout=60.0, max_retries=0)
    results = []

    plain = client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input="Say hello to the plain response.")
    results.append({"call": "responses", "stream": False, "id": plain.id, "text": plain.output_text,
                    "finish_reason": plain.status, "usage": usage_of(plain)})

    result, _ = streamed(client, input="Say hello to the streamed response.")
    results.append(result)

    conversation = [{"role": "user", "content": "What is the weather in Paris? Please use the tool."}]
    result, asked = streamed(client, input=conversation, tools=[WEATHER_TOOL])
    results.append(result)
    call = next(item for item in asked.output if item.type == "function_call")
    city = json.loads(call.arguments).get("city", "Paris")
    conversation += [item.model_dump(exclude_none=True) for item in asked.output]
    conversation.append({"type": "function_call_output", "call_id": call.call_id,
                         "output": f"Sunny and 21 degrees in {city}."})
    result, _ = streamed(client, input=conversation, tools=[WEATHER_TOOL])
    results.append(result)

    print(json.dumps({"client": "openai_responses_stream.py", "sdk": "openai-python",
                      "sdk_version": openai.__version__, "results": results}))


if __name__ == "__main__":
    main()
