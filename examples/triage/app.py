#!/usr/bin/env python3
"""Support-ticket triage: an ordinary LLM application.

For every ticket in tickets.json it runs a three-step pipeline against each enabled provider:

1. triage   - category and priority as structured JSON output, validated here;
2. analysis - likely cause, first checks and owning team, using the triage result;
3. draft    - a reply to the customer, using the triage and the analysis.

Providers are called through their official Python SDKs: OpenAI (openai), Anthropic
(anthropic), Google Gemini (google-genai) and xAI (openai with base URL https://api.x.ai/v1).
A provider is enabled when its API key is in the environment (OPENAI_API_KEY,
ANTHROPIC_API_KEY, GEMINI_API_KEY, XAI_API_KEY); --providers picks among them.

Calls run one at a time in a fixed order (provider by provider, ticket by ticket, step by
step) with no retries. The app tracks latency, tokens (from each SDK's usage fields) and the
projected cost of every call with its own small price table, and prints a per-ticket table
and a per-provider summary on stdout. Everything on stdout above the "timings" section
depends only on the answers received; --json-out writes those results as JSON.

Exit status: 0 when every call succeeded, 1 when a provider failed (its remaining tickets are
skipped, the others carry on), 2 for a usage or configuration error.
"""

import argparse
import json
import os
import ssl
import sys
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent

CATEGORIES = ["billing", "outage", "bug", "feature_request", "account_access", "security", "other"]
PRIORITIES = ["urgent", "high", "normal", "low"]

TRIAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": CATEGORIES, "description": "What the ticket is about."},
        "priority": {"type": "string", "enum": PRIORITIES, "description": "How soon support must act."},
        "summary": {"type": "string", "description": "The customer's problem in one sentence."},
    },
    "required": ["category", "priority", "summary"],
    "additionalProperties": False,
}

TRIAGE_SYSTEM = (
    "You triage customer support tickets for a project-management SaaS. "
    f"Classify the ticket. category: one of {', '.join(CATEGORIES)}. "
    "priority: urgent = outage, security incident, or many users blocked with no workaround; "
    "high = one customer blocked or money taken wrongly; normal = degraded but workable; "
    "low = questions and feature requests. summary: one sentence, at most 20 words."
)
ANALYSIS_SYSTEM = (
    "You are a senior support engineer. Be concrete and brief; plain text, no markdown."
)
DRAFT_SYSTEM = (
    "You write replies to customers on behalf of the support team: friendly, specific, honest, "
    "no promises the team cannot keep, signed 'The Support Team'. Plain text, no markdown."
)

ANALYSIS_MAX_TOKENS = 300
DRAFT_MAX_TOKENS = 400
TRIAGE_MAX_TOKENS = 200
TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# Providers: defaults and prices.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProviderInfo:
    name: str
    key_env: str
    default_model: str
    sdk: str


PROVIDERS = {
    "openai": ProviderInfo("openai", "OPENAI_API_KEY", "gpt-4o-mini", "openai"),
    "anthropic": ProviderInfo("anthropic", "ANTHROPIC_API_KEY", "claude-haiku-4-5", "anthropic"),
    "gemini": ProviderInfo("gemini", "GEMINI_API_KEY", "gemini-2.5-flash", "google-genai"),
    "xai": ProviderInfo("xai", "XAI_API_KEY", "grok-3-mini", "openai (base URL https://api.x.ai/v1)"),
}

# List prices in US dollars per million tokens (input, output), as published by the providers
# at the time of writing. Check them before trusting a dollar figure. A model resolves to the
# longest entry its name starts with, so dated names (gpt-4o-mini-2024-07-18) are priced too.
PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "grok-3-mini": (0.30, 0.50),
}


def price_of(model):
    best = None
    for name, price in PRICES.items():
        if model == name or model.startswith(name + "-"):
            if best is None or len(name) > len(best[0]):
                best = (name, price)
    return best[1] if best else None


# ---------------------------------------------------------------------------------------------
# Calls, usage, errors.
# ---------------------------------------------------------------------------------------------

@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Call:
    provider: str
    ticket: str
    step: str
    usage: Usage
    cost_usd: float | None
    latency_s: float


class TriageError(Exception):
    """The triage answer is not the JSON the app asked for."""


class ProviderError(Exception):
    """A call failed: the provider's error, a network error, or an unusable answer."""


def number(value):
    return value if isinstance(value, int) else 0


def validate_triage(value):
    """Checks a triage answer against TRIAGE_SCHEMA; returns the three fields."""
    if not isinstance(value, dict):
        raise TriageError(f"expected a JSON object, got {type(value).__name__}")
    missing = [key for key in TRIAGE_SCHEMA["required"] if key not in value]
    if missing:
        raise TriageError(f"missing field(s) {', '.join(missing)} in {json.dumps(value)[:200]}")
    if value["category"] not in CATEGORIES:
        raise TriageError(f"category {value['category']!r} is not one of {', '.join(CATEGORIES)}")
    if value["priority"] not in PRIORITIES:
        raise TriageError(f"priority {value['priority']!r} is not one of {', '.join(PRIORITIES)}")
    if not isinstance(value["summary"], str) or not value["summary"].strip():
        raise TriageError("summary is empty or not a string")
    return {"category": value["category"], "priority": value["priority"], "summary": value["summary"].strip()}


def parse_triage(answer):
    """The triage from an answer: JSON text (OpenAI, xAI, Gemini) or a tool's input (Anthropic)."""
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except json.JSONDecodeError as e:
            raise TriageError(f"answer is not JSON ({e}): {answer[:200]!r}") from None
    return validate_triage(answer)


# ---------------------------------------------------------------------------------------------
# One backend per SDK: triage() returns (JSON text or tool input, Usage), complete() returns
# (text, Usage); both raise ProviderError.
# ---------------------------------------------------------------------------------------------

class OpenAIBackend:
    """OpenAI chat completions; also xAI, which serves the same API at https://api.x.ai/v1."""

    def __init__(self, name, model, api_key, base_url=None):
        import openai

        self.openai = openai
        self.name, self.model = name, model
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=TIMEOUT_S)
        # grok-3-mini reasons before answering; its reasoning tokens count against max_tokens.
        self.reasoning = name == "xai" and model.startswith("grok-3-mini")

    def _create(self, messages, max_tokens, **extra):
        if self.reasoning:
            extra["reasoning_effort"] = "low"
            max_tokens += 2000
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=0, **extra)
        except self.openai.APIStatusError as e:
            raise ProviderError(status_error(e.status_code, e.body, e.message)) from None
        except self.openai.APIError as e:
            raise ProviderError(f"{type(e).__name__}: {e}{cause_of(e)}") from None
        if not response.choices:
            raise ProviderError("the answer has no choices")
        usage = Usage()
        if response.usage is not None:
            prompt = number(response.usage.prompt_tokens)
            completion = number(response.usage.completion_tokens)
            # xAI leaves reasoning tokens out of completion_tokens but bills them and counts
            # them in total_tokens; OpenAI includes them in completion_tokens.
            total = number(response.usage.total_tokens)
            usage = Usage(prompt, max(completion, total - prompt))
        return response.choices[0].message, usage

    def triage(self, system, prompt):
        message, usage = self._create(
            [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
            TRIAGE_MAX_TOKENS,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "ticket_triage", "strict": True, "schema": TRIAGE_SCHEMA}})
        if getattr(message, "refusal", None):
            raise ProviderError(f"the model refused: {message.refusal}")
        return message.content or "", usage

    def complete(self, system, prompt, max_tokens):
        message, usage = self._create(
            [{"role": "system", "content": system}, {"role": "user", "content": prompt}], max_tokens)
        return (message.content or "").strip(), usage


class AnthropicBackend:
    """Anthropic messages; the triage is a tool call forced with tool_choice."""

    TOOL = {
        "name": "record_triage",
        "description": "Record the triage of one support ticket.",
        "input_schema": TRIAGE_SCHEMA,
    }

    def __init__(self, model, api_key):
        import anthropic

        self.anthropic = anthropic
        self.model = model
        self.client = anthropic.Anthropic(api_key=api_key, max_retries=0, timeout=TIMEOUT_S)

    def _create(self, system, prompt, max_tokens, **extra):
        try:
            message = self.client.messages.create(
                model=self.model, system=system, max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}], **extra)
        except self.anthropic.APIStatusError as e:
            raise ProviderError(status_error(e.status_code, e.body, e.message)) from None
        except self.anthropic.APIError as e:
            raise ProviderError(f"{type(e).__name__}: {e}{cause_of(e)}") from None
        u = message.usage
        usage = Usage(number(u.input_tokens) + number(getattr(u, "cache_creation_input_tokens", 0))
                      + number(getattr(u, "cache_read_input_tokens", 0)), number(u.output_tokens))
        return message, usage

    def triage(self, system, prompt):
        message, usage = self._create(system, prompt, TRIAGE_MAX_TOKENS, tools=[self.TOOL],
                                      tool_choice={"type": "tool", "name": self.TOOL["name"]})
        call = next((b for b in message.content if b.type == "tool_use" and b.name == self.TOOL["name"]), None)
        if call is None:
            raise ProviderError(f"no {self.TOOL['name']} tool call in the answer (stop_reason {message.stop_reason})")
        return call.input, usage

    def complete(self, system, prompt, max_tokens):
        message, usage = self._create(system, prompt, max_tokens)
        return "".join(b.text for b in message.content if b.type == "text").strip(), usage


class GeminiBackend:
    """Gemini generateContent; the triage uses response_mime_type JSON with a response_schema."""

    # Gemini's response_schema is an OpenAPI subset: the same schema without additionalProperties.
    SCHEMA = {k: v for k, v in TRIAGE_SCHEMA.items() if k != "additionalProperties"}

    def __init__(self, model, api_key):
        from google import genai
        from google.genai import errors, types

        self.types, self.errors = types, errors
        self.model = model
        self.client = genai.Client(api_key=api_key, http_options=types.HttpOptions(
            timeout=int(TIMEOUT_S * 1000), retry_options=types.HttpRetryOptions(attempts=1)))

    def _generate(self, system, prompt, max_tokens, **extra):
        types = self.types
        if self.model.startswith("gemini-2.5-flash"):
            # No thinking: the answers are short and thinking tokens are billed as output.
            extra["thinking_config"] = types.ThinkingConfig(thinking_budget=0)
        config = types.GenerateContentConfig(system_instruction=system, max_output_tokens=max_tokens,
                                             temperature=0, **extra)
        try:
            response = self.client.models.generate_content(model=self.model, contents=prompt, config=config)
        except self.errors.APIError as e:
            raise ProviderError(f"HTTP {e.code}: {e.message or e.status}") from None
        except Exception as e:  # transport errors (httpx's): the SDK does not wrap them
            if not (isinstance(e, OSError) or type(e).__module__.startswith(("httpx", "httpcore"))):
                raise
            raise ProviderError(f"{type(e).__name__}: {e}{cause_of(e)}") from None
        meta = response.usage_metadata
        usage = Usage()
        if meta is not None:
            # Thinking tokens are billed as output tokens.
            usage = Usage(number(meta.prompt_token_count),
                          number(meta.candidates_token_count) + number(meta.thoughts_token_count))
        return response, usage

    def triage(self, system, prompt):
        response, usage = self._generate(system, prompt, TRIAGE_MAX_TOKENS,
                                         response_mime_type="application/json", response_schema=self.SCHEMA)
        return response.text or "", usage

    def complete(self, system, prompt, max_tokens):
        response, usage = self._generate(system, prompt, max_tokens)
        return (response.text or "").strip(), usage


def status_error(status, body, fallback):
    """`HTTP 429 rate_limit_error: <the provider's message>` from an OpenAI-style or Anthropic
    error body ({"error": {"type", "message"}}), else the SDK's own message."""
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type") or error.get("code")
        return f"HTTP {status}{' ' + kind if isinstance(kind, str) else ''}: {error['message']}"
    return f"HTTP {status}: {fallback}"


def cause_of(error):
    cause = error.__cause__ or error.__context__
    if cause is None or not str(cause) or str(cause) in str(error):
        return ""
    return f" ({type(cause).__name__}: {cause})"


def make_backend(name, model, api_key):
    if name == "openai":
        return OpenAIBackend(name, model, api_key)
    if name == "xai":
        return OpenAIBackend(name, model, api_key, base_url="https://api.x.ai/v1")
    if name == "anthropic":
        return AnthropicBackend(model, api_key)
    if name == "gemini":
        return GeminiBackend(model, api_key)
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------

def ticket_text(ticket):
    return (f"Ticket {ticket['id']} from {ticket['customer']} ({ticket['plan']} plan)\n"
            f"Subject: {ticket['subject']}\n\n{ticket['body']}")


def analysis_prompt(ticket, triage):
    return (f"Analyze this {triage['category']} ticket (priority {triage['priority']}) in at most 80 words: "
            "the likely cause, what to check first, and which team should own it.\n"
            f"Triage summary: {triage['summary']}\n\n{ticket_text(ticket)}")


def draft_prompt(ticket, triage, analysis):
    return (f"Draft the reply to {ticket['customer']} about {triage['category']} ticket {ticket['id']} "
            f"(priority {triage['priority']}), at most 120 words.\n"
            f"Internal analysis (do not quote it): {analysis}\n\n{ticket_text(ticket)}")


@dataclass
class ProviderRun:
    name: str
    model: str
    results: dict = field(default_factory=dict)  # ticket id -> {"triage", "analysis", "draft"}
    calls: list = field(default_factory=list)
    error: str | None = None

    def tokens(self):
        return (sum(c.usage.input_tokens for c in self.calls), sum(c.usage.output_tokens for c in self.calls))

    def cost(self):
        costs = [c.cost_usd for c in self.calls]
        return None if any(c is None for c in costs) else sum(costs)


def timed(run, ticket, step, fn, *args):
    started = time.perf_counter()
    answer, usage = fn(*args)
    latency = time.perf_counter() - started
    price = price_of(run.model)
    cost = None if price is None else (usage.input_tokens * price[0] + usage.output_tokens * price[1]) / 1e6
    run.calls.append(Call(run.name, ticket["id"], step, usage, cost, latency))
    return answer


class StepFailed(Exception):
    """A ticket's step failed: which step, and the provider's or the validator's error."""

    def __init__(self, step, error):
        super().__init__(f"step {step}: {error}")


def triage_ticket(run, backend, ticket):
    """The three steps for one ticket: its triage, analysis and draft, or StepFailed."""
    step = "triage"
    try:
        triage = parse_triage(timed(run, ticket, step, backend.triage, TRIAGE_SYSTEM, ticket_text(ticket)))
        step = "analysis"
        analysis = timed(run, ticket, step, backend.complete, ANALYSIS_SYSTEM,
                         analysis_prompt(ticket, triage), ANALYSIS_MAX_TOKENS)
        if not analysis:
            raise ProviderError("empty answer")
        step = "draft"
        draft = timed(run, ticket, step, backend.complete, DRAFT_SYSTEM,
                      draft_prompt(ticket, triage, analysis), DRAFT_MAX_TOKENS)
        if not draft:
            raise ProviderError("empty answer")
    except (ProviderError, TriageError) as e:
        raise StepFailed(step, e) from e
    return {"triage": triage, "analysis": analysis, "draft": draft}


def run_provider(run, backend, tickets, progress):
    for ticket in tickets:
        try:
            result = triage_ticket(run, backend, ticket)
        except StepFailed as e:
            run.error = f"{run.name} ({run.model}), ticket {ticket['id']}, {e}"
            print(f"triage: error: {run.error}; skipping {run.name}'s remaining tickets", file=sys.stderr)
            return
        run.results[ticket["id"]] = result
        if progress:
            print(f"triage: {run.name} {ticket['id']} {result['triage']['category']}/{result['triage']['priority']}",
                  file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Serving: the same pipeline as an HTTP API, one ticket per request.
# ---------------------------------------------------------------------------------------------

def check_ticket(ticket):
    if not isinstance(ticket, dict):
        raise ValueError("a ticket is a JSON object")
    for key in ("id", "customer", "plan", "subject", "body"):
        if not isinstance(ticket.get(key), str):
            raise ValueError(f"ticket {ticket.get('id', '?')} has no string {key!r}")


def triage_one(backends, ticket):
    """One ticket through every provider, as the API answers it: the status and the JSON body."""
    started = time.perf_counter()
    answer = {"id": ticket["id"], "results": {}, "calls": [], "errors": []}
    for name, model, backend in backends:
        run = ProviderRun(name, model)
        try:
            answer["results"][name] = triage_ticket(run, backend, ticket)
        except StepFailed as e:
            answer["results"][name] = None
            answer["errors"].append(f"{name} ({model}): {e}")
        answer["calls"].extend(
            {"provider": c.provider, "step": c.step, "tokens_in": c.usage.input_tokens,
             "tokens_out": c.usage.output_tokens,
             "cost_usd": None if c.cost_usd is None else round(c.cost_usd, 9)}
            for c in run.calls)
    # Wall-clock time differs on every run: a regression replay ignores it.
    answer["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return (502 if answer["errors"] else 200), answer


def serve(address, backends, tls=None):
    """Serves POST /triage (a ticket as JSON, as in tickets.json) and GET /health until killed;
    over TLS with `tls`, an ssl.SSLContext for the server side."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, body):
            data = (json.dumps(body, ensure_ascii=False) + "\n").encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, {"status": "ok", "providers": [name for name, _, _ in backends]})
            else:
                self.reply(404, {"error": f"no such resource: GET {self.path}"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path != "/triage":
                self.reply(404, {"error": f"no such resource: POST {self.path}"})
                return
            try:
                ticket = json.loads(raw)
                check_ticket(ticket)
            except ValueError as e:
                self.reply(400, {"error": f"bad ticket: {e}"})
                return
            self.reply(*triage_one(backends, ticket))

        def log_message(self, format, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def finish_request(self, request, client_address):
            # On the request's own thread, so a slow handshake holds up no other client.
            if tls is not None:
                try:
                    request = tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            super().finish_request(request, client_address)

    host, _, port = address.rpartition(":")
    server = Server((host.strip("[]") or "127.0.0.1", int(port)), Handler)
    scheme = "https" if tls is not None else "http"
    print(f"triage: serving on {address} ({scheme}): POST /triage, GET /health", file=sys.stderr, flush=True)
    server.serve_forever()


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------

def money(value):
    return "unpriced" if value is None else f"${value:.6f}"


def plural(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def clip(text, width):
    return text if len(text) <= width else text[:width - 3] + "..."


def report(runs, tickets, show):
    out = []
    names = [r.name for r in runs]
    total_calls = 3 * len(tickets) * len(runs)
    out.append(f"Support-ticket triage: {plural(len(tickets), 'ticket')} x {plural(len(runs), 'provider')} x 3 steps "
               f"= {total_calls} LLM calls")
    out.append("providers: " + ", ".join(f"{r.name} ({r.model})" for r in runs))
    out.append("")

    col = 22
    out.append(f"{'ticket':<8} {'subject':<38} " + " ".join(f"{n:<{col}}" for n in names).rstrip())
    for ticket in tickets:
        cells = []
        for r in runs:
            res = r.results.get(ticket["id"])
            cells.append(f"{res['triage']['category']}/{res['triage']['priority']}" if res else "-")
        out.append(f"{ticket['id']:<8} {clip(ticket['subject'], 38):<38} "
                   + " ".join(f"{c:<{col}}" for c in cells).rstrip())
    if len(runs) > 1:
        answered = [t for t in tickets if all(t["id"] in r.results for r in runs)]
        agree = sum(1 for t in answered if len({r.results[t["id"]]["triage"]["category"] for r in runs}) == 1)
        out.append(f"category agreement: {agree}/{len(answered)} tickets got the same category from every provider")
    out.append("")

    out.append(f"{'provider':<10} {'model':<20} {'calls':>5} {'tokens in':>10} {'tokens out':>10} {'cost (USD)':>11}")
    all_in = all_out = all_calls = 0
    all_cost = 0.0
    for r in runs:
        tin, tout = r.tokens()
        cost = r.cost()
        all_in, all_out, all_calls = all_in + tin, all_out + tout, all_calls + len(r.calls)
        all_cost = None if cost is None or all_cost is None else all_cost + cost
        out.append(f"{r.name:<10} {r.model:<20} {len(r.calls):>5} {tin:>10,} {tout:>10,} {money(cost):>11}")
    out.append(f"{'all':<10} {'':<20} {all_calls:>5} {all_in:>10,} {all_out:>10,} {money(all_cost):>11}")

    failed = [r for r in runs if r.error]
    if failed:
        out.append("")
        out.append("errors:")
        out.extend(f"  {r.error}" for r in failed)

    for ticket_id in show:
        ticket = next(t for t in tickets if t["id"] == ticket_id)
        out.append("")
        out.append(f"== {ticket['id']}: {ticket['subject']} ==")
        for r in runs:
            res = r.results.get(ticket_id)
            if res is None:
                out.append(f"-- {r.name}: no result")
                continue
            t = res["triage"]
            out.append(f"-- {r.name} ({r.model}): {t['category']}/{t['priority']}: {t['summary']}")
            out.append(f"   analysis: {res['analysis']}")
            out.append("   draft: " + res["draft"].replace("\n", "\n          "))
    return "\n".join(out)


def timings(runs):
    out = ["", "--- timings (wall clock: these differ from run to run) ---",
           f"{'provider':<10} {'calls':>5} {'total s':>9} {'mean ms':>9} {'max ms':>9}"]
    for r in runs:
        lat = [c.latency_s for c in r.calls]
        mean = sum(lat) / len(lat) * 1000 if lat else 0.0
        out.append(f"{r.name:<10} {len(lat):>5} {sum(lat):>9.2f} {mean:>9.1f} {max(lat, default=0) * 1000:>9.1f}")
    lat = [c.latency_s for r in runs for c in r.calls]
    if len(runs) > 1 and lat:
        out.append(f"{'all':<10} {len(lat):>5} {sum(lat):>9.2f} {sum(lat) / len(lat) * 1000:>9.1f} "
                   f"{max(lat) * 1000:>9.1f}")
    return "\n".join(out)


def results_json(runs, tickets):
    """The deterministic results: everything but timings."""
    return {
        "tickets": [
            {"id": t["id"], "subject": t["subject"],
             "results": {r.name: r.results.get(t["id"]) for r in runs}}
            for t in tickets
        ],
        "providers": [
            {"name": r.name, "model": r.model, "calls": len(r.calls),
             "tokens_in": r.tokens()[0], "tokens_out": r.tokens()[1],
             "cost_usd": None if r.cost() is None else round(r.cost(), 9), "error": r.error}
            for r in runs
        ],
        "calls": [
            {"provider": c.provider, "ticket": c.ticket, "step": c.step,
             "tokens_in": c.usage.input_tokens, "tokens_out": c.usage.output_tokens,
             "cost_usd": None if c.cost_usd is None else round(c.cost_usd, 9)}
            for r in runs for c in r.calls
        ],
    }


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------

def usage_error(message):
    print(f"triage: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Triage support tickets with LLMs: category and priority, analysis, drafted reply.")
    parser.add_argument("--providers", default=None,
                        help="comma-separated providers to run, among " + ", ".join(PROVIDERS)
                             + " (default: every provider whose API key is set)")
    parser.add_argument("--model", action="append", default=[], metavar="PROVIDER=MODEL",
                        help="use another model for a provider, e.g. --model openai=gpt-4.1-mini")
    parser.add_argument("--tickets", type=Path, default=HERE / "tickets.json", help="tickets file (JSON list)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tickets")
    parser.add_argument("--show", action="append", default=[], metavar="TICKET_ID",
                        help="also print the full analysis and draft of this ticket (repeatable)")
    parser.add_argument("--json-out", type=Path, help="write the results (no timings) as JSON to this file")
    parser.add_argument("--no-timings", action="store_true",
                        help="leave out the timings section, so all of stdout is deterministic")
    parser.add_argument("--progress", action="store_true", help="print a line per ticket on stderr")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE",
                        help="with --serve: serve HTTPS with this certificate (PEM, chain included)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="with --serve: the certificate's key (PEM)")
    parser.add_argument("--serve", metavar="HOST:PORT",
                        help="serve the pipeline as an HTTP API instead: POST /triage with one ticket as JSON")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    if args.providers is None:
        chosen = [name for name, info in PROVIDERS.items() if os.environ.get(info.key_env)]
        if not chosen:
            usage_error("no provider enabled: set at least one of "
                        + ", ".join(info.key_env for info in PROVIDERS.values()))
    else:
        chosen = [p.strip() for p in args.providers.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in PROVIDERS]
        if unknown:
            usage_error(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}")
        keyless = [PROVIDERS[p].key_env for p in chosen if not os.environ.get(PROVIDERS[p].key_env)]
        if keyless:
            usage_error(f"--providers {args.providers} needs {', '.join(keyless)} in the environment")
        chosen = list(dict.fromkeys(chosen))

    models = {name: info.default_model for name, info in PROVIDERS.items()}
    for spec in args.model:
        name, sep, model = spec.partition("=")
        if not sep or name not in PROVIDERS or not model:
            usage_error(f"--model expects PROVIDER=MODEL with PROVIDER among {', '.join(PROVIDERS)}, got {spec!r}")
        models[name] = model

    try:
        tickets = json.loads(args.tickets.read_text(encoding="utf-8"))
        for t in tickets:
            check_ticket(t)
    except (OSError, ValueError, AttributeError) as e:
        usage_error(f"cannot read tickets from {args.tickets}: {e}")
    if args.limit is not None:
        tickets = tickets[:max(0, args.limit)]
    ids = {t["id"] for t in tickets}
    for wanted in args.show:
        if wanted not in ids:
            usage_error(f"--show {wanted}: no such ticket")

    if args.serve:
        port = args.serve.rpartition(":")[2]
        if not port.isdigit():
            usage_error(f"--serve expects HOST:PORT, got {args.serve!r}")
        tls = None
        if (args.tls_cert is None) != (args.tls_key is None):
            usage_error("--tls-cert and --tls-key go together")
        if args.tls_cert is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                tls.load_cert_chain(args.tls_cert, args.tls_key)
            except (OSError, ssl.SSLError) as e:
                usage_error(f"cannot load --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {e}")
        serve(args.serve, [(name, models[name], make_backend(name, models[name], os.environ[PROVIDERS[name].key_env]))
                           for name in chosen], tls)
        return 0

    runs = []
    for name in chosen:
        run = ProviderRun(name, models[name])
        runs.append(run)
        backend = make_backend(name, models[name], os.environ[PROVIDERS[name].key_env])
        print(f"triage: {name} ({models[name]}): {plural(len(tickets), 'ticket')}, 3 calls each", file=sys.stderr)
        run_provider(run, backend, tickets, args.progress)

    print(report(runs, tickets, args.show))
    if not args.no_timings:
        print(timings(runs))
    if args.json_out:
        args.json_out.write_text(json.dumps(results_json(runs, tickets), indent=2, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
