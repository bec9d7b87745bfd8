#!/usr/bin/env python3
"""An ordinary app using the official `google-genai` Python SDK: generate_content,
generate_content_stream and embed_content against the Gemini API.

Reads GEMINI_API_KEY (or GOOGLE_API_KEY) from the environment. Prints one JSON object on stdout:
{"client", "sdk", "sdk_version", "results": [...]}, where each result has "call", "stream", "id",
"text", "finish_reason" and "usage" {"input_tokens", "output_tokens"}; the embedding result has
"values" instead of "text".
"""

import json
import os

from google import genai
from google.genai import types

MODEL = os.environ.get("GEMINI_MODEL", "gemini-2.5-flash")
EMBED_MODEL = os.environ.get("GEMINI_EMBED_MODEL", "gemini-embedding-001")


def usage_of(meta):
    if meta is None:
        return None
    return {"input_tokens": meta.prompt_token_count, "output_tokens": meta.candidates_token_count}


def main():
    client = genai.Client(http_options=types.HttpOptions(timeout=60_000))
    config = types.GenerateContentConfig(system_instruction="You are a terse assistant.")
    results = []

    plain = client.models.generate_content(model=MODEL, contents="Say hello to the plain request.", config=config)
    results.append({"call": "generateContent", "stream": False, "id": plain.response_id, "text": plain.text,
                    "finish_reason": str(plain.candidates[0].finish_reason.value),
                    "usage": usage_of(plain.usage_metadata)})

    text, usage, finish, response_id, chunks = [], None, None, None, 0
    for chunk in client.models.generate_content_stream(model=MODEL, contents="Say hello to the streamed request.",
                                                       config=config):
        chunks += 1
        response_id = chunk.response_id
        if chunk.text:
            text.append(chunk.text)
        if chunk.candidates and chunk.candidates[0].finish_reason:
            finish = str(chunk.candidates[0].finish_reason.value)
        if chunk.usage_metadata and chunk.usage_metadata.candidates_token_count is not None:
            usage = usage_of(chunk.usage_metadata)
    results.append({"call": "streamGenerateContent", "stream": True, "id": response_id, "text": "".join(text),
                    "finish_reason": finish, "chunks": chunks, "usage": usage})

    embedded = client.models.embed_content(model=EMBED_MODEL, contents="Embed this sentence please.")
    results.append({"call": "embedContent", "stream": False, "id": None, "text": None,
                    "values": embedded.embeddings[0].values})

    print(json.dumps({"client": "gemini_generate.py", "sdk": "google-genai", "sdk_version": genai.__version__,
                      "results": results}))


if __name__ == "__main__":
    main()
