#!/usr/bin/env python3
"""A local fake LLM provider for llmsim's end-to-end tests (standard library only).

It speaks the real wire formats of the providers llmsim knows, closely enough that the
official SDKs cannot tell it from the real thing:

* OpenAI (also x.ai, OpenRouter under /api/v1, or any OpenAI-compatible path suffix):
  POST /v1/chat/completions (plain, or SSE with `stream: true`, ending in `data: [DONE]`,
  with a final usage chunk when `stream_options.include_usage` is true, tool calls),
  POST /v1/responses (plain, or SSE with the real `response.*` event names, function calls),
  POST /v1/embeddings (`encoding_format` float or base64), GET /v1/models.
* Anthropic: POST /v1/messages (plain, or SSE message_start / content_block_start / ping /
  content_block_delta / content_block_stop / message_delta / message_stop, tool_use blocks).
* Gemini: POST /v1beta/models/{model}:generateContent, :streamGenerateContent (SSE with
  `?alt=sse`, a streamed JSON array without), :embedContent, :batchEmbedContents, :countTokens.
* Ollama (native, no credential): POST /api/chat and /api/generate, streamed as NDJSON
  (`application/x-ndjson`, one compact JSON line per piece with `done: false`, the last with
  `done: true`, `done_reason`, `prompt_eval_count` and `eval_count`) unless `stream: false`.

Rules that tests rely on:

* Every answer contains a fresh nonce `nonce-<16 hex>`, so a replayed answer provably came from
  a recording. Embedding vectors are a function of a fresh nonce (sha256-derived floats).
* Token usage is deterministic: input tokens = whitespace-separated words in all the request's
  message texts (system prompts and tool results included; for embeddings, the inputs; token
  arrays count one per token); output tokens = words in the answer text (for a tool call: words
  in its arguments JSON).
* A tool call is answered when tools are given, the last turn is a user text (not a tool
  result) and it contains "use the tool" (any case). Its id is `call_<24 alnum>` (OpenAI),
  `toolu_01<22 alnum>` (Anthropic); string arguments carry the nonce.
* A forced tool (OpenAI `tool_choice` naming a function or "required", Anthropic `tool_choice`
  {"type": "tool"} or {"type": "any"}, Gemini `toolConfig.functionCallingConfig.mode` ANY) is
  always called, with arguments generated from its schema (rules below).
* Structured output: OpenAI `response_format` json_schema (chat) or `text.format` json_schema
  (responses), Anthropic `output_format` / `output_config.format` json_schema, Gemini
  `responseMimeType` application/json with `responseSchema` or `responseJsonSchema`: the answer
  text is compact JSON valid for the schema. Without a schema (json_object, or the JSON mime type
  alone) it is `{"answer": "<the usual answer text>"}`. Generated values: `$ref` resolved,
  `const` kept, enums pick the value whose words the last user text mentions most (else a pick
  seeded by that text and the model: the same prompt to the same model always gets the same
  value), every property filled, strings `<property> <nonce>`, numbers seeded within their
  bounds. An object that has no string and allows extra properties gets a `nonce` property, so
  the nonce is in the answer. Gemini's upper-case types (OBJECT, STRING) are understood.
* A last user text containing `fake-error-<status>` (e.g. fake-error-429) gets that HTTP status
  with the provider's real error body.
* A missing credential (Authorization: Bearer for OpenAI-style paths, x-api-key for Anthropic,
  x-goog-api-key or ?key= for Gemini) gets 401 with the provider's error shape.
* Streams are paced: `--event-delay-ms` (default 20) between events.
* JSON bodies are laid out as each provider lays them out on the wire: OpenAI indents by 2
  spaces (error bodies by 4) and ends with a newline, Gemini indents by 2 spaces and ends with
  a newline, Anthropic is compact; SSE data is compact everywhere, Gemini's SSE lines end in
  CRLF.
* Every request is appended to `--log` as one JSON line (request line, host, headers, body,
  status, nonce, answer, usage, response headers and the full response body text) *before*
  the response is sent, so once a client has its answer the log already holds it.
* `listening <addr>` lines, then `ready`, are printed (flushed) on stdout once all listeners
  are bound, so a harness can wait without sleeping. Port 0 picks a free port.
"""

import argparse
import base64
import gzip
import hashlib
import json
import re
import secrets
import socket
import ssl
import string
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from urllib.parse import parse_qs, urlsplit

ALNUM = string.ascii_letters + string.digits
TOOL_TRIGGER = "use the tool"
ERROR_TRIGGER = re.compile(r"fake-error-(\d{3})")


def rand_alnum(n):
    return "".join(secrets.choice(ALNUM) for _ in range(n))


def new_nonce():
    return "nonce-" + secrets.token_hex(8)


def words(text):
    return len(text.split()) if isinstance(text, str) else 0


OLLAMA_PATHS = ("/api/chat", "/api/generate")


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Request text extraction (what counts as "message text" for usage and echo).
# ---------------------------------------------------------------------------------------------

def openai_content_texts(content):
    """Texts of an OpenAI chat/responses `content`: a string or a list of typed parts."""
    if isinstance(content, str):
        return [content]
    out = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
    return out


def anthropic_content_texts(content):
    if isinstance(content, str):
        return [content]
    out = []
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                out.append(block.get("text", ""))
            elif block.get("type") == "tool_result":
                out.extend(anthropic_content_texts(block.get("content", "")))
    return out


def gemini_parts_texts(parts):
    out = []
    for part in parts or []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            out.append(part["text"])
    return out


class Conversation:
    """What the fake needs from a request: all texts, the last user text, tool situation, and
    the structured output asked for."""

    def __init__(self, texts, last_user_text, last_is_user_text, tools, forced_tool=None, output=None):
        self.texts = texts
        self.last_user_text = last_user_text or ""
        self.last_is_user_text = last_is_user_text
        self.tools = tools  # list of (name, json-schema dict)
        # A tool the request forces (tool_choice): a name, or "" for "any tool"; None if not forced.
        self.forced_tool = forced_tool
        # Structured output: None (free text), ("json_schema", schema) or ("json_object", None).
        self.output = output
        # The model asked for (set by the endpoint); salts seeded picks, so models can disagree.
        self.model = ""

    @property
    def input_tokens(self):
        return sum(words(t) for t in self.texts)

    def wants_tool(self):
        return bool(self.tools) and self.last_is_user_text and TOOL_TRIGGER in self.last_user_text.lower()

    def tool_to_call(self, nonce):
        """(name, arguments dict) of the tool call to answer with, or None for a text answer.

        A forced tool (tool_choice naming one, or "any"/"required") is always called, with
        arguments generated from its schema (see `schema_value`); otherwise the trigger phrase
        rule applies, with `tool_arguments`."""
        if self.tools and self.forced_tool is not None and self.last_is_user_text:
            name, schema = next(((n, s) for n, s in self.tools if n == self.forced_tool), self.tools[0])
            args = structured_value(schema, nonce, self.last_user_text, self.model, name)
            return name, args if isinstance(args, dict) else tool_arguments(schema, nonce)
        if self.wants_tool():
            name, schema = self.tools[0]
            return name, tool_arguments(schema, nonce)
        return None

    def text_answer(self, provider, nonce):
        """The answer text: JSON for the structured output asked for, else the usual echo."""
        if self.output is not None:
            kind, schema = self.output
            if kind == "json_schema" and isinstance(schema, dict) and schema:
                return dumps(structured_value(schema, nonce, self.last_user_text, self.model, "response"))
            return dumps({"answer": answer_text(provider, self, nonce)})
        return answer_text(provider, self, nonce)

    def forced_error(self):
        m = ERROR_TRIGGER.search(self.last_user_text)
        return int(m.group(1)) if m else None


def openai_chat_conversation(body):
    texts, last_user, last_is_user = [], "", False
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        parts = openai_content_texts(msg.get("content"))
        texts.extend(parts)
        if msg.get("role") == "user":
            last_user = " ".join(parts)
        last_is_user = msg.get("role") == "user"
    tools = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and fn.get("name"):
            tools.append((fn["name"], fn.get("parameters") or {}))
    choice = body.get("tool_choice")
    forced = None
    if choice == "required":
        forced = ""
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        forced = choice["function"].get("name") or ""
    output = None
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else {}
        output = ("json_schema", spec.get("schema") or {})
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        output = ("json_object", None)
    return Conversation(texts, last_user, last_is_user, tools, forced, output)


def openai_responses_conversation(body):
    texts, last_user, last_is_user = [], "", False
    if isinstance(body.get("instructions"), str):
        texts.append(body["instructions"])
    items = body.get("input")
    if isinstance(items, str):
        texts.append(items)
        last_user, last_is_user = items, True
    elif isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                continue
            kind = item.get("type", "message")
            if kind == "message" or "role" in item:
                parts = openai_content_texts(item.get("content"))
                texts.extend(parts)
                if item.get("role") == "user":
                    last_user = " ".join(parts)
                last_is_user = item.get("role") == "user"
            elif kind == "function_call_output":
                output = item.get("output")
                texts.extend(openai_content_texts(output))
                last_is_user = False
            else:
                last_is_user = False
    tools = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name"):
            tools.append((tool["name"], tool.get("parameters") or {}))
    choice = body.get("tool_choice")
    forced = None
    if choice == "required":
        forced = ""
    elif isinstance(choice, dict) and choice.get("type") == "function":
        forced = choice.get("name") or ""
    output = None
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        output = ("json_schema", fmt.get("schema") or {})
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        output = ("json_object", None)
    return Conversation(texts, last_user, last_is_user, tools, forced, output)


def anthropic_conversation(body):
    texts, last_user, last_is_user = [], "", False
    system = body.get("system")
    if isinstance(system, str):
        texts.append(system)
    elif isinstance(system, list):
        texts.extend(anthropic_content_texts(system))
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        texts.extend(anthropic_content_texts(content))
        if msg.get("role") == "user":
            has_tool_result = isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") == "tool_result" for b in content
            )
            user_texts = [content] if isinstance(content, str) else [
                b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"
            ]
            last_user = " ".join(user_texts) if user_texts else last_user
            last_is_user = not has_tool_result
        else:
            last_is_user = False
    tools = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("name"):
            tools.append((tool["name"], tool.get("input_schema") or {}))
    choice = body.get("tool_choice")
    forced = None
    if isinstance(choice, dict) and choice.get("type") == "tool":
        forced = choice.get("name") or ""
    elif isinstance(choice, dict) and choice.get("type") == "any":
        forced = ""
    output = None
    fmt = body.get("output_format")
    if not isinstance(fmt, dict):
        fmt = (body.get("output_config") or {}).get("format") if isinstance(body.get("output_config"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        output = ("json_schema", fmt.get("schema") or {})
    return Conversation(texts, last_user, last_is_user, tools, forced, output)


def gemini_conversation(body):
    texts, last_user, last_is_user = [], "", False
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        texts.extend(gemini_parts_texts(system.get("parts")))
    for content in body.get("contents") or []:
        if not isinstance(content, dict):
            continue
        parts = content.get("parts") or []
        part_texts = gemini_parts_texts(parts)
        texts.extend(part_texts)
        is_response = any(isinstance(p, dict) and ("functionResponse" in p or "function_response" in p) for p in parts)
        if content.get("role", "user") == "user":
            if part_texts:
                last_user = " ".join(part_texts)
            last_is_user = not is_response
        else:
            last_is_user = False
    tools = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
            if isinstance(decl, dict) and decl.get("name"):
                tools.append((decl["name"], decl.get("parameters") or decl.get("parametersJsonSchema")
                               or decl.get("parameters_json_schema") or {}))
    forced = None
    tool_config = either(body, "toolConfig", "tool_config")
    calling = either(tool_config, "functionCallingConfig", "function_calling_config")
    if isinstance(calling, dict) and str(calling.get("mode", "")).upper() == "ANY":
        allowed = either(calling, "allowedFunctionNames", "allowed_function_names") or []
        forced = allowed[0] if allowed else ""
    output = None
    config = either(body, "generationConfig", "generation_config")
    mime = either(config, "responseMimeType", "response_mime_type")
    if isinstance(mime, str) and mime.lower().startswith("application/json"):
        schema = (either(config, "responseJsonSchema", "response_json_schema")
                  or either(config, "responseSchema", "response_schema"))
        output = ("json_schema", schema) if isinstance(schema, dict) and schema else ("json_object", None)
    return Conversation(texts, last_user, last_is_user, tools, forced, output)


def either(obj, camel, snake):
    """A field of a Gemini request under its camelCase or snake_case name (both are accepted)."""
    if not isinstance(obj, dict):
        return None
    return obj.get(camel) if camel in obj else obj.get(snake)


# ---------------------------------------------------------------------------------------------
# Answers.
# ---------------------------------------------------------------------------------------------

def answer_text(provider, conv, nonce):
    echo = " ".join(conv.last_user_text.split()[:12])
    return f"Fake {provider} answer {nonce} to: {echo}".rstrip()


def tool_arguments(schema, nonce):
    """Arguments that satisfy a JSON schema's properties, strings carrying the nonce."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    args = {}
    if isinstance(props, dict):
        for name, prop in props.items():
            kind = prop.get("type") if isinstance(prop, dict) else None
            if isinstance(kind, list):
                kind = next((k for k in kind if k != "null"), "string")
            kind = kind.lower() if isinstance(kind, str) else kind
            if isinstance(prop, dict) and prop.get("enum"):
                args[name] = prop["enum"][0]
            elif kind in ("integer", "number"):
                args[name] = 42
            elif kind == "boolean":
                args[name] = True
            elif kind == "array":
                args[name] = []
            elif kind == "object":
                args[name] = {}
            else:
                args[name] = nonce
    if not any(v == nonce for v in args.values()):
        args.setdefault("nonce", nonce)
    return args


def schema_kind(schema):
    """The JSON type a schema asks for, lowercased (Gemini writes OBJECT, STRING...)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), None)
    if isinstance(kind, str):
        return kind.lower()
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def seeded(seed, salt, path, n):
    """A deterministic integer in [0, n) from the request text, the model and the value's path."""
    digest = hashlib.sha256(f"{salt}\0{path}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % n


def pick_enum(values, seed, salt, path):
    """The enum value whose words the last user text mentions most (a word counts when it starts
    with one of the value's words of 3+ letters: "billing" for "billing", "bugs" for "bug");
    with no mention, a pick seeded by the text and the model, so the same prompt to the same
    model always gets the same value."""
    mentioned = re.findall(r"[a-z0-9]+", seed.lower())
    best, best_score = None, 0
    for value in values:
        keys = [k for k in re.findall(r"[a-z0-9]+", str(value).lower()) if len(k) >= 3]
        score = sum(1 for word in mentioned for key in keys if word.startswith(key))
        if score > best_score:
            best, best_score = value, score
    return best if best is not None else values[seeded(seed, salt, path, len(values))]


def schema_value(schema, nonce, seed, salt, root, path, depth=0):
    """A value valid for a JSON schema (or Gemini's OpenAPI-style schema): `$ref` into `$defs`
    resolved, `const` kept, enums picked by `pick_enum`, every object property filled, arrays
    given `minItems` (at least one) items, numbers and integers seeded within their bounds,
    strings `<name> <nonce>`."""
    if not isinstance(schema, dict) or depth > 12:
        return f"{path} {nonce}"
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return schema_value(target or {}, nonce, seed, salt, root, path, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return pick_enum(schema["enum"], seed, salt, path)
    for key in ("anyOf", "oneOf", "allOf", "any_of", "one_of"):
        options = [o for o in schema.get(key) or [] if isinstance(o, dict) and schema_kind(o) != "null"]
        if options:
            return schema_value(options[0], nonce, seed, salt, root, path, depth + 1)
    kind = schema_kind(schema)
    if kind == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        value = {name: schema_value(prop, nonce, seed, salt, root, name, depth + 1) for name, prop in props.items()}
        extra = schema.get("additionalProperties", schema.get("additional_properties", True))
        if extra is not False and not any(nonce in dumps(v) for v in value.values()):
            value["nonce"] = nonce
        return value
    if kind == "array":
        low = schema.get("minItems", schema.get("min_items")) or 1
        count = max(1, min(int(low), 3))
        return [schema_value(schema.get("items") or {}, nonce, seed, salt, root, path, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", 1)
        high = schema.get("maximum", low + 9)
        number = low + seeded(seed, salt, path, int(max(0, high - low)) + 1)
        return int(number) if kind == "integer" else float(number)
    if kind == "boolean":
        return seeded(seed, salt, path, 2) == 1
    if kind == "null":
        return None
    return f"{path} {nonce}"


def structured_value(schema, nonce, seed, salt, name):
    """`schema_value` for a whole response or tool input schema."""
    return schema_value(schema, nonce, seed, salt, schema, name)


def chunks_of(text):
    """Split an answer into stream deltas of one word (with its following space) each."""
    pieces = re.findall(r"\S+\s*", text)
    return pieces or [text]


def embedding_values(nonce, index, dims):
    out, counter = [], 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{nonce}:{index}:{counter}".encode()).digest()
        for i in range(0, len(digest), 2):
            out.append(round((int.from_bytes(digest[i:i + 2], "big") / 65535.0) * 2 - 1, 6))
        counter += 1
    return out[:dims]


class Reply:
    """A complete response, computed before anything is sent."""

    def __init__(self, status, headers, body=None, events=None, content_type="application/json"):
        self.status = status
        self.headers = list(headers)
        self.body = body  # bytes, for non-streamed answers
        self.events = events  # list of bytes, sent as chunks with a delay between them
        self.content_type = content_type
        self.nonce = None
        self.answer = None
        self.tool_call = None
        self.usage = None
        self.endpoint = None
        self.stream = events is not None

    def body_text(self):
        if self.events is not None:
            return b"".join(self.events).decode("utf-8", "replace")
        return (self.body or b"").decode("utf-8", "replace")


# How each provider lays out a JSON response body (not SSE data, which is compact everywhere):
# OpenAI indents by 2 spaces (its error bodies by 4) and ends with a newline; Gemini indents
# by 2 spaces and ends with a newline; Anthropic sends compact JSON with no newline.
JSON_LAYOUT = {
    "openai": (2, True),
    "openai-error": (4, True),
    "gemini": (2, True),
    "anthropic": (None, False),
}


def layout(provider, obj):
    indent, newline = JSON_LAYOUT[provider]
    text = dumps(obj) if indent is None else json.dumps(obj, indent=indent, ensure_ascii=False)
    return (text + ("\n" if newline else "")).encode()


def json_reply(status, headers, obj, provider, content_type="application/json"):
    return Reply(status, headers, body=layout(provider, obj), content_type=content_type)


# ---- provider header sets ---------------------------------------------------------------------

def openai_headers(started):
    ms = max(1, int((time.monotonic() - started) * 1000))
    return [
        ("x-request-id", "req_" + secrets.token_hex(16)),
        ("openai-processing-ms", str(ms)),
        ("openai-version", "2020-10-01"),
        ("openai-organization", "user-fakeprovider"),
        ("openai-project", "proj_" + rand_alnum(24)),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-limit-tokens", "10000000"),
        ("x-ratelimit-remaining-tokens", "9999990"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-reset-tokens", "0s"),
        ("access-control-expose-headers", "X-Request-ID"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("x-content-type-options", "nosniff"),
    ]


def anthropic_headers():
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    return [
        ("request-id", "req_011C" + rand_alnum(20)),
        ("anthropic-organization-id", str(uuid.uuid4())),
        ("anthropic-ratelimit-requests-limit", "4000"),
        ("anthropic-ratelimit-requests-remaining", "3999"),
        ("anthropic-ratelimit-requests-reset", reset),
        ("anthropic-ratelimit-input-tokens-limit", "400000"),
        ("anthropic-ratelimit-input-tokens-remaining", "400000"),
        ("anthropic-ratelimit-input-tokens-reset", reset),
        ("anthropic-ratelimit-output-tokens-limit", "80000"),
        ("anthropic-ratelimit-output-tokens-remaining", "80000"),
        ("anthropic-ratelimit-output-tokens-reset", reset),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("x-robots-tag", "none"),
    ]


def gemini_headers(started):
    ms = max(1, int((time.monotonic() - started) * 1000))
    return [
        ("vary", "Origin"),
        ("vary", "X-Origin"),
        ("vary", "Referer"),
        ("x-xss-protection", "0"),
        ("x-frame-options", "SAMEORIGIN"),
        ("x-content-type-options", "nosniff"),
        ("server-timing", f"gfet4t7; dur={ms}"),
        ("alt-svc", 'h3=":443"; ma=2592000,h3-29=":443"; ma=2592000'),
    ]


# ---- error shapes -----------------------------------------------------------------------------

OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", None,
          "You didn't provide an API key. You need to provide your API key in an Authorization header "
          "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
          "username) if you're accessing the API from your browser and are prompted for a username. You "
          "can obtain an API key from https://platform.openai.com/account/api-keys."),
    404: ("invalid_request_error", None, "Invalid URL"),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min (RPM): "
          "Limit 3, Used 3, Requested 1. Please try again in 20s."),
    500: ("server_error", None,
          "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later"),
}

ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "x-api-key header is required"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

GEMINI_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED",
          "Method doesn't allow unregistered callers (callers without established identity). "
          "Please use API Key or other form of API consumer identity to call this API."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                      "https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}


def error_reply(provider, status, started, message=None):
    if provider == "anthropic":
        kind, default = ANTHROPIC_ERRORS.get(status, ("api_error", "Internal server error"))
        headers = anthropic_headers()
        request_id = dict(headers)["request-id"]
        body = {"type": "error", "error": {"type": kind, "message": message or default},
                "request_id": request_id}
        headers.append(("x-should-retry", "true" if status in (408, 409, 429) or status >= 500 else "false"))
        return json_reply(status, headers, body, "anthropic")
    if provider == "gemini":
        kind, default = GEMINI_ERRORS.get(status, ("UNKNOWN", "Unknown error."))
        body = {"error": {"code": status, "message": message or default, "status": kind}}
        return json_reply(status, gemini_headers(started), body, "gemini", "application/json; charset=UTF-8")
    kind, code, default = OPENAI_ERRORS.get(status, ("server_error", None, "Unknown error."))
    body = {"error": {"message": message or default, "type": kind, "param": None, "code": code}}
    headers = openai_headers(started)
    if status == 401:
        headers = [h for h in headers if not h[0].startswith(("openai-", "x-ratelimit"))]
    return json_reply(status, headers, body, "openai-error", "application/json; charset=utf-8")


# ---- OpenAI -------------------------------------------------------------------------------------

FINGERPRINT = "fp_" + secrets.token_hex(5)


def openai_usage(conv_in, out):
    return {
        "prompt_tokens": conv_in,
        "completion_tokens": out,
        "total_tokens": conv_in + out,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


# The comment OpenRouter sends on a stream while it waits for the model (its documented
# keep-alive); a client's SSE parser skips it.
OPENROUTER_PROCESSING = b": OPENROUTER PROCESSING\n\n"


def sse_data(obj):
    return b"data: " + dumps(obj).encode() + b"\n\n"


def sse_event(name, obj):
    return b"event: " + name.encode() + b"\ndata: " + dumps(obj).encode() + b"\n\n"


def openai_chat(body, started):
    conv = openai_chat_conversation(body)
    nonce = new_nonce()
    model = body.get("model") or "gpt-4o-mini"
    conv.model = model
    cid = "chatcmpl-" + rand_alnum(29)
    created = int(time.time())
    tool_call = None
    call = conv.tool_to_call(nonce)
    if call is not None:
        name, args = call
        arguments = dumps(args)
        tool_call = {"id": "call_" + rand_alnum(24), "type": "function",
                     "function": {"name": name, "arguments": arguments}}
        # A tool_choice naming the function ends with "stop", as the real API does.
        finish = "stop" if conv.forced_tool else "tool_calls"
        text, out_tokens = None, words(arguments)
    else:
        text = conv.text_answer("openai", nonce)
        out_tokens, finish = words(text), "stop"
    usage = openai_usage(conv.input_tokens, out_tokens)

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta, finish_reason=None, choices=True):
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "service_tier": "default", "system_fingerprint": FINGERPRINT,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
                   if choices else []}
            if include_usage:
                obj["usage"] = None
            return obj

        events = []
        if tool_call is None:
            events.append(sse_data(chunk({"role": "assistant", "content": "", "refusal": None})))
            for piece in chunks_of(text):
                events.append(sse_data(chunk({"content": piece})))
        else:
            first = {"index": 0, "id": tool_call["id"], "type": "function",
                     "function": {"name": tool_call["function"]["name"], "arguments": ""}}
            events.append(sse_data(chunk({"role": "assistant", "content": None, "tool_calls": [first],
                                          "refusal": None})))
            for piece in chunks_of(tool_call["function"]["arguments"]):
                events.append(sse_data(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})))
        events.append(sse_data(chunk({}, finish)))
        if include_usage:
            last = chunk({}, choices=False)
            last["usage"] = usage
            events.append(sse_data(last))
        events.append(b"data: [DONE]\n\n")
        reply = Reply(200, openai_headers(started), events=events,
                      content_type="text/event-stream; charset=utf-8")
    else:
        message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if tool_call is not None:
            message["tool_calls"] = [tool_call]
        obj = {"id": cid, "object": "chat.completion", "created": created, "model": model,
               "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
               "usage": usage, "service_tier": "default", "system_fingerprint": FINGERPRINT}
        reply = json_reply(200, openai_headers(started), obj, "openai")
    reply.endpoint = "openai.chat.completions"
    reply.nonce, reply.answer, reply.tool_call = nonce, text, tool_call
    reply.usage = {"input_tokens": conv.input_tokens, "output_tokens": out_tokens}
    return reply


def ollama_conversation(path, body):
    if path == "/api/chat":
        return openai_chat_conversation(body)
    messages = [{"role": "system", "content": body["system"]}] if isinstance(body.get("system"), str) else []
    messages.append({"role": "user", "content": body.get("prompt") or ""})
    return openai_chat_conversation({"messages": messages})


def ollama_native(path, body, started):
    """Ollama's /api/chat or /api/generate: compact JSON lines as Go writes them."""
    conv = ollama_conversation(path, body)
    nonce = new_nonce()
    model = body.get("model") or "llama3.2"
    text = conv.text_answer("ollama", nonce)
    out_tokens = words(text)
    chat = path == "/api/chat"
    elapsed = max(1, int((time.monotonic() - started) * 1e9))

    def line(piece, done):
        obj = {"model": model, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())}
        if chat:
            obj["message"] = {"role": "assistant", "content": piece}
        else:
            obj["response"] = piece
        obj["done"] = done
        if done:
            obj["done_reason"] = "stop"
            obj.update({"total_duration": elapsed, "load_duration": 1000, "prompt_eval_count": conv.input_tokens,
                        "prompt_eval_duration": 1000, "eval_count": out_tokens, "eval_duration": elapsed})
        return obj

    if body.get("stream", True):
        events = [(dumps(line(piece, False)) + "\n").encode() for piece in chunks_of(text)]
        events.append((dumps(line("", True)) + "\n").encode())
        reply = Reply(200, [], events=events, content_type="application/x-ndjson")
    else:
        reply = Reply(200, [], body=dumps(line(text, True)).encode(), content_type="application/json; charset=utf-8")
    reply.endpoint = "ollama.chat" if chat else "ollama.generate"
    reply.nonce, reply.answer = nonce, text
    reply.usage = {"input_tokens": conv.input_tokens, "output_tokens": out_tokens}
    return reply


def openai_responses(body, started):
    conv = openai_responses_conversation(body)
    nonce = new_nonce()
    model = body.get("model") or "gpt-4o-mini"
    conv.model = model
    rid = "resp_" + secrets.token_hex(24)
    created = int(time.time())
    tool_call = None
    call = conv.tool_to_call(nonce)
    if call is not None:
        name, args = call
        arguments = dumps(args)
        tool_call = {"id": "fc_" + secrets.token_hex(24), "type": "function_call", "status": "completed",
                     "arguments": arguments, "call_id": "call_" + rand_alnum(24), "name": name}
        text, out_tokens = None, words(arguments)
        item = tool_call
    else:
        text = conv.text_answer("openai", nonce)
        out_tokens = words(text)
        item = {"id": "msg_" + secrets.token_hex(24), "type": "message", "status": "completed",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
                "role": "assistant"}
    usage = {"input_tokens": conv.input_tokens, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": conv.input_tokens + out_tokens}

    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    text_format = text_format if isinstance(text_format, dict) else {"type": "text"}

    def response(status, output, usage_value):
        return {"id": rid, "object": "response", "created_at": created, "status": status,
                "background": False, "error": None, "incomplete_details": None,
                "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": None, "model": model, "output": output, "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"), "prompt_cache_key": None,
                "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
                "service_tier": "default", "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": text_format, "verbosity": "medium"},
                "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
                "top_logprobs": 0, "top_p": body.get("top_p", 1.0), "truncation": "disabled",
                "usage": usage_value, "user": None, "metadata": body.get("metadata") or {}}

    if body.get("stream"):
        seq = [0]

        def ev(name, **fields):
            obj = {"type": name, "sequence_number": seq[0], **fields}
            seq[0] += 1
            return sse_event(name, obj)

        events = [ev("response.created", response=response("in_progress", [], None)),
                  ev("response.in_progress", response=response("in_progress", [], None))]
        if tool_call is None:
            added = dict(item, status="in_progress", content=[])
            events.append(ev("response.output_item.added", output_index=0, item=added))
            empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            events.append(ev("response.content_part.added", item_id=item["id"], output_index=0,
                             content_index=0, part=empty_part))
            for piece in chunks_of(text):
                events.append(ev("response.output_text.delta", item_id=item["id"], output_index=0,
                                 content_index=0, delta=piece, logprobs=[]))
            events.append(ev("response.output_text.done", item_id=item["id"], output_index=0,
                             content_index=0, text=text, logprobs=[]))
            events.append(ev("response.content_part.done", item_id=item["id"], output_index=0,
                             content_index=0, part=item["content"][0]))
        else:
            added = dict(item, status="in_progress", arguments="")
            events.append(ev("response.output_item.added", output_index=0, item=added))
            for piece in chunks_of(tool_call["arguments"]):
                events.append(ev("response.function_call_arguments.delta", item_id=item["id"],
                                 output_index=0, delta=piece))
            events.append(ev("response.function_call_arguments.done", item_id=item["id"], output_index=0,
                             arguments=tool_call["arguments"]))
        events.append(ev("response.output_item.done", output_index=0, item=item))
        events.append(ev("response.completed", response=response("completed", [item], usage)))
        reply = Reply(200, openai_headers(started), events=events,
                      content_type="text/event-stream; charset=utf-8")
    else:
        reply = json_reply(200, openai_headers(started), response("completed", [item], usage), "openai")
    reply.endpoint = "openai.responses"
    reply.nonce, reply.answer, reply.tool_call = nonce, text, tool_call
    reply.usage = {"input_tokens": conv.input_tokens, "output_tokens": out_tokens}
    return reply


def openai_embeddings(body, started):
    raw = body.get("input")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    tokens = 0
    for one in inputs:
        if isinstance(one, str):
            tokens += words(one)
        elif isinstance(one, list):
            tokens += len(one)
    dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 16
    dims = max(1, min(dims, 4096))
    nonce = new_nonce()
    data = []
    for index in range(len(inputs)):
        values = embedding_values(nonce, index, dims)
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *values)).decode()
        else:
            embedding = values
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    obj = {"object": "list", "data": data, "model": body.get("model") or "text-embedding-3-small",
           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    reply = json_reply(200, openai_headers(started), obj, "openai")
    reply.endpoint = "openai.embeddings"
    reply.nonce = nonce
    reply.usage = {"input_tokens": tokens, "output_tokens": 0}
    return reply


def openai_models(started):
    models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    obj = {"object": "list", "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
                                      for m in models]}
    reply = json_reply(200, openai_headers(started), obj, "openai")
    reply.endpoint = "openai.models"
    return reply


# ---- Anthropic ----------------------------------------------------------------------------------

def anthropic_messages(body, started):
    conv = anthropic_conversation(body)
    nonce = new_nonce()
    model = body.get("model") or "claude-sonnet-4-5"
    conv.model = model
    mid = "msg_01" + rand_alnum(22)
    tool_call = None
    call = conv.tool_to_call(nonce)
    if call is not None:
        name, args = call
        tool_call = {"type": "tool_use", "id": "toolu_01" + rand_alnum(22), "name": name, "input": args}
        text, arguments = None, dumps(args)
        out_tokens, stop = words(arguments), "tool_use"
        content = [tool_call]
    else:
        text = conv.text_answer("anthropic", nonce)
        out_tokens, stop = words(text), "end_turn"
        content = [{"type": "text", "text": text}]
    usage = {"input_tokens": conv.input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
             "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
             "output_tokens": out_tokens, "service_tier": "standard"}
    if body.get("stream"):
        start_usage = dict(usage, output_tokens=1)
        events = [sse_event("message_start", {"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}})]
        if tool_call is None:
            events.append(sse_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                            "content_block": {"type": "text", "text": ""}}))
            events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
            for piece in chunks_of(text):
                events.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                                "delta": {"type": "text_delta", "text": piece}}))
        else:
            block = dict(tool_call, input={})
            events.append(sse_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                            "content_block": block}))
            events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
            events.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                            "delta": {"type": "input_json_delta", "partial_json": ""}}))
            for piece in chunks_of(arguments):
                events.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                                "delta": {"type": "input_json_delta",
                                                                          "partial_json": piece}}))
        events.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(sse_event("message_delta", {"type": "message_delta",
                                                  "delta": {"stop_reason": stop, "stop_sequence": None},
                                                  "usage": {"output_tokens": out_tokens}}))
        events.append(sse_event("message_stop", {"type": "message_stop"}))
        reply = Reply(200, anthropic_headers(), events=events, content_type="text/event-stream; charset=utf-8")
    else:
        obj = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
               "stop_reason": stop, "stop_sequence": None, "usage": usage}
        reply = json_reply(200, anthropic_headers(), obj, "anthropic")
    reply.endpoint = "anthropic.messages"
    reply.nonce, reply.answer, reply.tool_call = nonce, text, tool_call
    reply.usage = {"input_tokens": conv.input_tokens, "output_tokens": out_tokens}
    return reply


# ---- Gemini -------------------------------------------------------------------------------------

GEMINI_JSON = "application/json; charset=UTF-8"


def gemini_generate(model, method, query, body, started):
    conv = gemini_conversation(body)
    conv.model = model
    nonce = new_nonce()
    response_id = rand_alnum(22)
    tool_call = None
    call = conv.tool_to_call(nonce)
    if call is not None:
        name, args = call
        tool_call = {"name": name, "args": args}
        text, out_tokens = None, words(dumps(args))
        pieces = [{"functionCall": tool_call}]
    else:
        text = conv.text_answer("gemini", nonce)
        out_tokens = words(text)
        pieces = None
    usage = {"promptTokenCount": conv.input_tokens, "candidatesTokenCount": out_tokens,
             "totalTokenCount": conv.input_tokens + out_tokens,
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": conv.input_tokens}]}

    def chunk(parts, finish, usage_value):
        candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        return {"candidates": [candidate], "usageMetadata": usage_value, "modelVersion": model,
                "responseId": response_id}

    if method == "generateContent":
        parts = pieces if pieces is not None else [{"text": text}]
        reply = json_reply(200, gemini_headers(started), chunk(parts, True, usage), "gemini", GEMINI_JSON)
        reply.endpoint = "gemini.generateContent"
    else:
        partial_usage = {"promptTokenCount": conv.input_tokens, "totalTokenCount": conv.input_tokens,
                         "promptTokensDetails": usage["promptTokensDetails"]}
        if pieces is not None:
            objs = [chunk(pieces, True, usage)]
        else:
            texts = chunks_of(text)
            # Gemini sends a few larger chunks rather than one per token.
            groups = [texts[i:i + 3] for i in range(0, len(texts), 3)]
            objs = [chunk([{"text": "".join(g)}], i == len(groups) - 1,
                          usage if i == len(groups) - 1 else partial_usage)
                    for i, g in enumerate(groups)]
        if "sse" in query.get("alt", []):
            events = [b"data: " + dumps(o).encode() + b"\r\n\r\n" for o in objs]
            reply = Reply(200, gemini_headers(started), events=events, content_type="text/event-stream")
        else:
            events = []
            for i, o in enumerate(objs):
                prefix = b"[" if i == 0 else b",\r\n"
                events.append(prefix + json.dumps(o, indent=2, ensure_ascii=False).encode() + b"\n")
            events[-1] += b"]"
            reply = Reply(200, gemini_headers(started), events=events, content_type=GEMINI_JSON)
        reply.endpoint = "gemini.streamGenerateContent"
    reply.nonce, reply.answer, reply.tool_call = nonce, text, tool_call
    reply.usage = {"input_tokens": conv.input_tokens, "output_tokens": out_tokens}
    return reply


def gemini_embed(model, method, body, started):
    nonce = new_nonce()
    if method == "batchEmbedContents":
        contents = [r.get("content") or {} for r in body.get("requests") or [] if isinstance(r, dict)]
    else:
        contents = [body.get("content") or {}]
    tokens = sum(words(t) for c in contents for t in gemini_parts_texts(c.get("parts")))
    dims = 16
    first = (body.get("requests") or [{}])[0] if method == "batchEmbedContents" else body
    if isinstance(first, dict) and isinstance(first.get("outputDimensionality"), int):
        dims = max(1, min(first["outputDimensionality"], 4096))
    embeddings = [{"values": embedding_values(nonce, i, dims)} for i in range(len(contents))]
    obj = {"embeddings": embeddings} if method == "batchEmbedContents" else {"embedding": embeddings[0]}
    reply = json_reply(200, gemini_headers(started), obj, "gemini", GEMINI_JSON)
    reply.endpoint = "gemini." + method
    reply.nonce = nonce
    reply.usage = {"input_tokens": tokens, "output_tokens": 0}
    return reply


def gemini_count(body, started):
    conv = gemini_conversation(body.get("generateContentRequest") or body)
    obj = {"totalTokens": conv.input_tokens,
           "promptTokensDetails": [{"modality": "TEXT", "tokenCount": conv.input_tokens}]}
    reply = json_reply(200, gemini_headers(started), obj, "gemini", GEMINI_JSON)
    reply.endpoint = "gemini.countTokens"
    reply.usage = {"input_tokens": conv.input_tokens, "output_tokens": 0}
    return reply


GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/([^:/]+):([A-Za-z]+)$")


# ---------------------------------------------------------------------------------------------
# HTTP plumbing.
# ---------------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # idle keep-alive connections are closed after this
    def setup(self):
        ctx = self.server.ssl_ctx
        if ctx is not None:
            self.request.settimeout(30)
            self.request = ctx.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 - signature is http.server's
        if self.server.verbose:
            sys.stderr.write("fake_provider: %s %s\n" % (self.address_string(), format % args))

    # -- request reading --

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        self.dispatch(b"")

    def do_POST(self):
        self.dispatch(self.read_body())

    def do_DELETE(self):
        self.dispatch(self.read_body())

    # -- routing --

    def dispatch(self, raw):
        started = time.monotonic()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        body, body_text = None, None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body_text = raw.decode("utf-8", "replace")

        gemini = GEMINI_PATH.match(path)
        if path in OLLAMA_PATHS:
            provider = "ollama"
        elif gemini:
            provider = "gemini"
        elif path.endswith("/messages") and "/chat/" not in path:
            provider = "anthropic"
        else:
            provider = "openai"

        reply = self.route(provider, path, gemini, query, body, body_text, started)
        self.respond(reply, provider, raw, body, body_text, query)

    def authorized(self, provider, query):
        if provider == "ollama":
            return True
        if provider == "anthropic":
            return bool(self.headers.get("x-api-key") or self.bearer())
        if provider == "gemini":
            return bool(self.headers.get("x-goog-api-key") or query.get("key") or self.bearer())
        return bool(self.bearer())

    def bearer(self):
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer "):].strip() if auth.lower().startswith("bearer ") else ""

    def route(self, provider, path, gemini, query, body, body_text, started):
        if not self.authorized(provider, query):
            return error_reply(provider, 401, started)
        if self.command == "GET":
            if path.endswith("/models") and provider == "openai":
                return openai_models(started)
            return error_reply(provider, 404, started)
        if self.command != "POST":
            return error_reply(provider, 404, started)
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request." if provider == "openai" else None
            return error_reply(provider, 400, started, message)

        conv = None
        if provider == "ollama":
            return ollama_native(path, body, started)
        if provider == "anthropic":
            conv = anthropic_conversation(body)
        elif provider == "gemini":
            conv = gemini_conversation(body)
        elif path.endswith("/chat/completions"):
            conv = openai_chat_conversation(body)
        elif path.endswith("/responses"):
            conv = openai_responses_conversation(body)
        forced = conv.forced_error() if conv is not None else None
        if forced:
            return error_reply(provider, forced, started)

        if provider == "anthropic":
            if path.endswith("/v1/messages"):
                return anthropic_messages(body, started)
        elif provider == "gemini":
            model, method = gemini.group(1), gemini.group(2)
            if method in ("generateContent", "streamGenerateContent"):
                return gemini_generate(model, method, query, body, started)
            if method in ("embedContent", "batchEmbedContents"):
                return gemini_embed(model, method, body, started)
            if method == "countTokens":
                return gemini_count(body, started)
        elif path.endswith("/chat/completions"):
            reply = openai_chat(body, started)
            if path.startswith("/api/v1/") and reply.events:
                # OpenRouter keeps a stream alive with SSE comments while the model works.
                reply.events.insert(0, OPENROUTER_PROCESSING)
            return reply
        elif path.endswith("/responses"):
            return openai_responses(body, started)
        elif path.endswith("/embeddings"):
            return openai_embeddings(body, started)
        return error_reply(provider, 404, started)

    # -- response writing --

    def respond(self, reply, provider, raw, body, body_text, query):
        accept = (self.headers.get("Accept-Encoding") or "").lower()
        payload = reply.body
        gzipped = reply.events is None and self.server.gzip and "gzip" in accept and payload
        if gzipped:
            payload = gzip.compress(payload)

        headers = [("Content-Type", reply.content_type)]
        if reply.events is None:
            headers.append(("Content-Length", str(len(payload or b""))))
        else:
            headers.append(("Transfer-Encoding", "chunked"))
            headers.append(("Cache-Control", "no-cache"))
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Connection", "close" if self.close_connection else "keep-alive"))
        headers.extend(reply.headers)

        self.server.log_request_entry({
            "time": time.time(),
            "listener": self.server.label,
            "client": "%s:%s" % self.client_address[:2],
            "tls": self.server.ssl_ctx is not None,
            "sni": getattr(self.request, "fake_provider_sni", None),
            "method": self.command,
            "path": self.path,
            "query": query,
            "http_version": self.request_version,
            "host": self.headers.get("Host"),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "body_text": body_text if body is None and raw else None,
            "body_hex": raw.hex() if raw else None,
            "provider": provider,
            "endpoint": reply.endpoint,
            "stream": reply.stream,
            "status": reply.status,
            "nonce": reply.nonce,
            "answer": reply.answer,
            "tool_call": reply.tool_call,
            "usage": reply.usage,
            "response_headers": {k.lower(): v for k, v in headers},
            "response_gzip": bool(gzipped),
            "response_body": reply.body_text(),
        })

        server = {"gemini": "scaffolding on HTTPServer2"}.get(provider, "cloudflare")
        head = [f"{self.protocol_version} {reply.status} {self.responses.get(reply.status, ('',))[0]}".rstrip(),
                f"Server: {server}", f"Date: {self.date_time_string()}"]
        head += [f"{name}: {value}" for name, value in headers]
        head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        self.log_request(reply.status)
        if self.server.latency:
            # Model time before the first byte, as a real provider takes:
            # deterministic per request so re-recordings pace alike.
            low, high = self.server.latency
            digest = int(hashlib.sha256(raw or b"").hexdigest()[:8], 16)
            time.sleep((low + digest % max(1, high - low)) / 1000.0)
        if reply.events is None:
            # Head and body in one write, as real servers send a small response.
            self.wfile.write(head + (payload or b""))
            return
        self.wfile.write(head)
        for i, event in enumerate(reply.events):
            if i and self.server.event_delay:
                time.sleep(self.server.event_delay)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host, port, family, options, log):
        self.address_family = family
        self.ssl_ctx = options.ssl_ctx
        self.gzip = options.gzip
        self.verbose = options.verbose
        self.event_delay = options.event_delay_ms / 1000.0
        self.latency = options.latency_ms
        self.log = log
        super().__init__((host, port), Handler)
        bound = self.socket.getsockname()
        self.label = ("[%s]:%d" if family == socket.AF_INET6 else "%s:%d") % (bound[0], bound[1])

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # Not HTTPServer.server_bind: it calls getfqdn(), a reverse DNS lookup.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.socket.getsockname()[:2]

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError, OSError)):
            if self.verbose:
                sys.stderr.write(f"fake_provider: connection from {client_address}: {exc!r}\n")
            return
        super().handle_error(request, client_address)

    def log_request_entry(self, entry):
        self.log.write(entry)


class RequestLog:
    """Appends one JSON line per request; thread-safe; flushed at once."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.seq = 0
        self.file = open(path, "a", encoding="utf-8") if path else None

    def write(self, entry):
        with self.lock:
            self.seq += 1
            if self.file is not None:
                self.file.write(json.dumps(dict({"seq": self.seq}, **entry), ensure_ascii=False) + "\n")
                self.file.flush()


def parse_listen(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or [V6]:PORT, got {text!r}")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host, int(port), family


def parse_range(text):
    low, _, high = text.partition("-")
    low, high = int(low), int(high or low)
    if low < 0 or high < low:
        raise argparse.ArgumentTypeError(f"bad range {text!r}: expected MIN-MAX milliseconds")
    return (low, high)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", action="append", type=parse_listen, metavar="ADDR:PORT",
                        help="address to listen on, repeatable (default 127.0.0.1:443; [::1]:443 for IPv6)")
    parser.add_argument("--cert", help="PEM certificate chain to serve")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--plain", action="store_true", help="plain HTTP instead of TLS")
    parser.add_argument("--log", help="append a JSON line per request served to this file")
    parser.add_argument("--event-delay-ms", type=float, default=20.0, help="delay between stream events")
    parser.add_argument("--latency-ms", type=parse_range, default=None, metavar="MIN-MAX",
                        help="wait this long (picked per request in the range) before answering, like a model")
    parser.add_argument("--gzip", action="store_true",
                        help="gzip non-streamed bodies when the client accepts gzip")
    parser.add_argument("--verbose", action="store_true", help="log requests and connection errors to stderr")
    options = parser.parse_args()

    options.ssl_ctx = None
    if not options.plain:
        if not options.cert or not options.key:
            parser.error("--cert and --key are required unless --plain")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(options.cert, options.key)
        ctx.set_alpn_protocols(["http/1.1"])

        def remember_sni(sslsock, server_name, _ctx):
            try:
                sslsock.fake_provider_sni = server_name
            except AttributeError:
                pass

        ctx.sni_callback = remember_sni
        options.ssl_ctx = ctx

    log = RequestLog(options.log)
    servers = [Server(host, port, family, options, log)
               for host, port, family in options.listen or [parse_listen("127.0.0.1:443")]]
    for server in servers:
        print(f"listening {server.label}", flush=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
