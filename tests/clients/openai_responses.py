#!/usr/bin/env python3
"""An ordinary app using the official `openai` Python SDK: a plain and a streamed Responses API call,
an embeddings call, and a chat-completions tool call round trip.

Reads OPENAI_API_KEY (and OPENAI_BASE_URL if set) from the environment. Prints one JSON object on
stdout: {"client", "sdk", "sdk_version", "results": [...]}, where each result has "call", "stream",
"id", "text", "finish_reason" and "usage" {"input_tokens", "output_tokens"}; the embedding result has
"values" instead of "text"; a tool call has "tool_call" {"id", "name", "arguments"}.
"""

import json
import os

import openai
from openai import OpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def main():
    client = OpenAI(timeout=60.0, max_retries=0)
    results = []

    plain = client.responses.create(model=MODEL, instructions="You are a terse assistant.",
                                    input="Say hello to the plain response.")
    results.append({"call": "responses", "stream": False, "id": plain.id, "text": plain.output_text,
                    "finish_reason": plain.status,
                    "usage": {"input_tokens": plain.usage.input_tokens, "output_tokens": plain.usage.output_tokens}})

    text, final, events = [], None, 0
    for event in client.responses.create(model=MODEL, instructions="You are a terse assistant.",
                                         input="Say hello to the streamed response.", stream=True):
        events += 1
        if event.type == "response.output_text.delta":
            text.append(event.delta)
        elif event.type == "response.completed":
            final = event.response
    results.append({"call": "responses", "stream": True, "id": final.id, "text": "".join(text),
                    "finish_reason": final.status, "events": events,
                    "usage": {"input_tokens": final.usage.input_tokens, "output_tokens": final.usage.output_tokens}})

    embedding = client.embeddings.create(model="text-embedding-3-small", input="Embed this sentence please.")
    results.append({"call": "embeddings", "stream": False, "id": None, "text": None,
                    "values": list(embedding.data[0].embedding),
                    "usage": {"input_tokens": embedding.usage.prompt_tokens, "output_tokens": 0}})

    messages = [{"role": "user", "content": "What is the weather in Paris? Please use the tool."}]
    asked = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    call = asked.choices[0].message.tool_calls[0]
    results.append({"call": "chat.completions", "stream": False, "id": asked.id, "text": None,
                    "finish_reason": asked.choices[0].finish_reason,
                    "usage": {"input_tokens": asked.usage.prompt_tokens, "output_tokens": asked.usage.completion_tokens},
                    "tool_call": {"id": call.id, "name": call.function.name,
                                  "arguments": json.loads(call.function.arguments)}})
    messages.append(asked.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny and 21 degrees."})
    answered = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    results.append({"call": "chat.completions", "stream": False, "id": answered.id,
                    "text": answered.choices[0].message.content, "finish_reason": answered.choices[0].finish_reason,
                    "usage": {"input_tokens": answered.usage.prompt_tokens,
                              "output_tokens": answered.usage.completion_tokens}})

    print(json.dumps({"client": "openai_responses.py", "sdk": "openai-python", "sdk_version": openai.__version__,
                      "results": results}))


if __name__ == "__main__":
    main()
