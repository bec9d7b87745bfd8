#!/usr/bin/env python3
"""An ordinary asyncio app using the official `openai` Python SDK's AsyncOpenAI: LLMSIM_REQUESTS
(default 200) chat completions at once, every third one streamed.

Prints one JSON object on stdout: {"client", "sdk", "sdk_version", "results": [...]} like
openai_chat.py, one result per request in request order, each with its "index".
"""

import asyncio
import json
import os

import openai
from openai import AsyncOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


async def one(client, index):
    messages = [{"role": "user", "content": f"Say hello to concurrent request {index}."}]
    if index % 3 == 2:
        stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        text, chunk_id = [], None
        async for chunk in stream:
            chunk_id = chunk.id
            for c in chunk.choices:
                if c.delta.content:
                    text.append(c.delta.content)
        return {"index": index, "call": "chat.completions", "stream": True, "id": chunk_id, "text": "".join(text)}
    reply = await client.chat.completions.create(model=MODEL, messages=messages)
    return {"index": index, "call": "chat.completions", "stream": False, "id": reply.id,
            "text": reply.choices[0].message.content}


async def main():
    count = int(os.environ.get("LLMSIM_REQUESTS", "200"))
    async with AsyncOpenAI(timeout=60.0, max_retries=0) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(count)))
    print(json.dumps({"client": "openai_concurrent.py", "sdk": "openai-python",
                      "sdk_version": openai.__version__, "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
