#!/usr/bin/env python3
"""An ordinary app using the official `google-genai` Python SDK, every call streamed
(generate_content_stream: streamGenerateContent with alt=sse): a text answer, then a function-call
round trip (the model asks for a function, the app runs it and streams the model's answer to the
function response).

Reads GEMINI_API_KEY (or GOOGLE_API_KEY) from the environment. Prints one JSON object on stdout:
{"client", "sdk", "sdk_version", "results": [...]}, where each result has "call", "stream", "id",
"text" (None for a function call), "finish_reason", "chunks", "usage" {"input_tokens",
"output_tokens"} and, for a function call, "tool_call" {"name", "arguments"}.
"""

import json
import os

from google import genai
from google.genai import types

MODEL = os.environ.get("GEMINI_MODEL", "gemini-2.5-flash")
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Current weather for a city.",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]),
)


def streamed(client, contents, config):
    """One streamed call, folded into a result."""
    text, usage, finish, response_id, chunks, calls = [], None, None, None, 0, []
    for chunk in client.models.generate_content_stream(model=MODEL, contents=contents, config=config):
        chunks += 1
        response_id = chunk.response_id
        if chunk.candidates and chunk.candidates[0].content and chunk.candidates[0].content.parts:
            for part in chunk.candidates[0].content.parts:
                if part.text:
                    text.append(part.text)
                if part.function_call:
                    calls.append(part.function_call)
        if chunk.candidates and chunk.candidates[0].finish_reason:
            finish = str(chunk.candidates[0].finish_reason.value)
        meta = chunk.usage_metadata
        if meta and meta.candidates_token_count is not None:
            usage = {"input_tokens": meta.prompt_token_count, "output_tokens": meta.candidates_token_count}
    result = {"call": "streamGenerateContent", "stream": True, "id": response_id,
              "text": None if calls else "".join(text), "finish_reason": finish, "chunks": chunks,
              "usage": usage}
    if calls:
        result["tool_call"] = {"name": calls[0].name, "arguments": dict(calls[0].args or {})}
    return result, calls


def main():
    client = genai.Client(http_options=types.HttpOptions(timeout=60_000))
    plain_config = types.GenerateContentConfig(system_instruction="You are a terse assistant.")
    tool_config = types.GenerateContentConfig(system_instruction="You are a terse weather assistant.",
                                              tools=[types.Tool(function_declarations=[WEATHER])])
    results = []

    result, _ = streamed(client, "Say hello to the streamed request.", plain_config)
    results.append(result)

    question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris? Please use the tool.")])
    result, calls = streamed(client, [question], tool_config)
    results.append(result)
    call = calls[0]
    answer = {"forecast": f"Sunny and 21 degrees in {(call.args or {}).get('city', 'Paris')}."}
    contents = [
        question,
        types.Content(role="model", parts=[types.Part(function_call=call)]),
        types.Content(role="user", parts=[types.Part.from_function_response(name=call.name, response=answer)]),
    ]
    result, _ = streamed(client, contents, tool_config)
    results.append(result)

    print(json.dumps({"client": "gemini_stream.py", "sdk": "google-genai", "sdk_version": genai.__version__,
                      "results": results}))


if __name__ == "__main__":
    main()
