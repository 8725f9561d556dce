"""OpenAI embeddings simulator: ``POST /v1/embeddings`` with OpenAI's limits, errors and headers.

What it enforces (research/saas-apis.md §8, confirmed against the openai-python SDK):

- ``Authorization: Bearer <key>``: a missing or wrong key gets 401 with OpenAI's error body.
- ``input`` is a string, a list of strings, a token array or a list of token arrays: at most
  2,048 inputs, none empty, each at most 8,192 tokens, at most 300,000 tokens summed.
- ``model`` is one of :data:`MODELS`; ``dimensions`` shortens the -3 models (Matryoshka style:
  truncate, then renormalise) and is refused for ada-002; ``encoding_format`` is ``float`` or
  ``base64`` (little-endian float32, which the SDK asks for by default and decodes itself).
- A request budget (``knobs.rate_limit`` requests/second; None = 3,000 RPM) and a token budget
  (``tokens_per_minute``, default 1,000,000) answer 429 with ``retry-after`` and
  ``retry-after-ms``; every answer carries the ``x-ratelimit-*`` headers.

Tokens are counted as OpenAI counts them: tiktoken with the model's encoding (cl100k_base for
all three embedding models), built from the encoding files shipped in ``openai_bpe`` (nothing is
downloaded). An input over 8,192 tokens and a request over 300,000 tokens summed are refused with
the real API's 400 and messages; ``usage`` reports the same counts. Token-array inputs count
their length.

Vectors are deterministic: the same (model, text) always gives the same unit vector. Each word
adds a few hashed +/-1 features (so texts sharing words are closer, honest lexical similarity)
and a hash of the whole text adds a small dense component (so no two texts collide and no
vector is zero).
"""

from __future__ import annotations

import array
import base64
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

import openai_bpe
from sandbox.base import Knobs, Simulator

#: Model name -> native output dimensions.
MODELS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
#: Models that accept the ``dimensions`` parameter.
SHORTENABLE = {"text-embedding-3-small", "text-embedding-3-large"}

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000
#: Default budgets when knobs.rate_limit is None (tier-1-like figures; UNCONFIRMED per account).
DEFAULT_REQUESTS_PER_MINUTE = 3000
DEFAULT_TOKENS_PER_MINUTE = 1_000_000

API_KEY = "sk-sandbox-openai"
_WORD = re.compile(r"\w+", re.UNICODE)
#: Hashed features each word switches on; more = smoother similarity, slower.
_FEATURES_PER_WORD = 4
#: Weight of the per-text dense component relative to the (unit) lexical part.
_DENSE_WEIGHT = 0.35


def count_tokens(text: str, model: str = "text-embedding-3-small") -> int:
    """Tokens of ``text`` as OpenAI counts them for ``model`` (its tiktoken encoding)."""
    return openai_bpe.count_tokens(text, openai_bpe.encoding_for_model(model))


def embed_text(model: str, text: str, dimensions: int) -> list[float]:
    """Deterministic unit vector of ``dimensions`` floats for ``text`` under ``model``."""
    native = MODELS[model]
    lexical: dict[int, float] = {}
    for word in set(_WORD.findall(text.lower())):
        digest = hashlib.blake2b(word.encode(), digest_size=4 * _FEATURES_PER_WORD).digest()
        for i in range(_FEATURES_PER_WORD):
            raw = int.from_bytes(digest[4 * i : 4 * i + 4], "little")
            index = raw % native
            # Features past ``dimensions`` are cut off, as a shortened -3 embedding is a prefix.
            if index < dimensions:
                lexical[index] = lexical.get(index, 0.0) + (1.0 if raw & 0x80000000 else -1.0)
    dense = _dense_noise(model, text, dimensions)
    lex_norm = math.sqrt(sum(v * v for v in lexical.values()))
    weight = _DENSE_WEIGHT if lex_norm else 1.0
    scale = weight / (math.hypot(*dense) or 1.0)
    vector = [d * scale for d in dense]
    for index, value in lexical.items():
        vector[index] += value / lex_norm
    return _unit(vector)


def _dense_noise(model: str, text: str, dimensions: int) -> list[float]:
    # shake_256 gives any number of deterministic bytes; int16 keeps the conversion in C.
    data = hashlib.shake_256(f"{model}\0{text}".encode()).digest(2 * dimensions)
    return [float(x) for x in array.array("h", data)]


def _unit(values: list[float]) -> list[float]:
    norm = math.hypot(*values)
    if norm == 0:
        return values
    inv = 1.0 / norm
    return [v * inv for v in values]


def go_duration(seconds: float) -> str:
    """OpenAI's reset-header format (Go durations): ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class Budget:
    """A refilling allowance: holds at most ``capacity`` units, refilled at ``rate`` per second.

    ``per_minute`` is what the ``x-ratelimit-limit-*`` headers report.
    """

    def __init__(self, per_minute: float, capacity: float | None = None) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60
        self.capacity = per_minute if capacity is None else capacity
        self.level = float(self.capacity)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, units: float) -> float:
        """Seconds until ``units`` are available (0 = now). Does not spend."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        if units <= self.level:
            return 0.0
        return (units - self.level) / self.rate

    def spend(self, units: float) -> None:
        if self.rate > 0:
            self._refill()
            self.level -= units

    def remaining(self) -> int:
        if self.rate <= 0:
            return 0
        self._refill()
        return max(0, int(self.level))

    def reset_seconds(self) -> float:
        """Seconds until the allowance is full again."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass
class Stats:
    """What tests read from ``GET /_sandbox/stats``."""

    requests: int = 0  # every POST /v1/embeddings that reached the handler
    succeeded: int = 0
    rate_limited: int = 0
    invalid: int = 0  # 400/401/404 answers
    faulted: int = 0  # answered with the fail_status fault
    rejected_inputs: int = 0  # refused for carrying the reject marker
    inputs: int = 0  # inputs embedded in successful requests
    tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    dimensions: list[int] = field(default_factory=list)
    encoding_formats: list[str] = field(default_factory=list)


class BadRequest(Exception):
    """An invalid request: carries OpenAI's error fields."""

    def __init__(self, message: str, *, status: int = 400, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": self.param,
                          "code": self.code}}
        return JSONResponse(body, self.status)


_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)


@dataclass
class EmbeddingRequest:
    model: str
    texts: list[str]
    tokens: list[int]
    dimensions: int
    encoding_format: str


class OpenAISimulator(Simulator):
    name = "openai"

    def __init__(self, knobs: Knobs | None = None, *, api_key: str = API_KEY) -> None:
        super().__init__(knobs)
        self.api_key = api_key
        self.tokens_per_minute = DEFAULT_TOKENS_PER_MINUTE
        self.stats = Stats()
        self._request_budget: Budget | None = None
        self._request_rate: float | None = -1.0  # forces a budget on first use
        self._token_budget = Budget(self.tokens_per_minute)
        #: ``PUT /_sandbox/faults``: inputs containing ``reject_marker`` are refused (400), and
        #: the next ``fail_times`` requests are answered ``fail_status``.
        self.reject_marker = ""
        self.fail_status = 0
        self.fail_times = 0
        self.retry_after = 1.0

    # --- wiring -----------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route("/v1/embeddings", self.embeddings, methods=["POST"])]

    def control_routes(self) -> list[BaseRoute]:
        return [
            Route("/stats", self._get_stats, methods=["GET"]),
            Route("/stats", self._reset_stats, methods=["DELETE"]),
            Route("/limits", self._put_limits, methods=["PUT"]),
            Route("/faults", self._put_faults, methods=["PUT"]),
        ]

    def env(self, base_url: str) -> dict[str, str]:
        return {"OPENAI_BASE_URL": f"{base_url}/v1", "OPENAI_API_KEY": self.api_key}

    # --- the API ----------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        self.stats.requests += 1
        if self.fail_times > 0:
            self.fail_times -= 1
            self.stats.faulted += 1
            return self._fault()
        try:
            self._authenticate(request)
            parsed = self._parse(await request.body())
            if self.reject_marker and any(self.reject_marker in t for t in parsed.texts):
                self.stats.rejected_inputs += 1
                raise BadRequest(_INVALID_INPUT)
        except BadRequest as exc:
            self.stats.invalid += 1
            return exc.response()
        limited = self._rate_limit(parsed)
        if limited is not None:
            self.stats.rate_limited += 1
            return limited
        return self._answer(parsed)

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise BadRequest(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                status=401, code=None,
            )
        key = header[7:].strip()
        if key != self.api_key:
            shown = f"{key[:3]}*****{key[-4:]}" if len(key) > 8 else "*****"
            raise BadRequest(
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                status=401, code="invalid_api_key",
            )

    def _parse(self, raw: bytes) -> EmbeddingRequest:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly.)"
            ) from None
        if not isinstance(body, dict):
            raise BadRequest(_INVALID_INPUT)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter", param="model")
        if model not in MODELS:
            raise BadRequest(
                f"The model `{model}` does not exist or you do not have access to it.",
                status=404, code="model_not_found",
            )
        texts = _parse_input(body.get("input"))
        tokens = [_token_count(t, model) for t in texts]
        _check_tokens(tokens)
        dimensions = _parse_dimensions(model, body.get("dimensions"))
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise BadRequest(
                f"Invalid value for 'encoding_format': '{fmt}'. Supported values are: "
                "'float' and 'base64'.", param="encoding_format", code="invalid_value",
            )
        return EmbeddingRequest(model, [_as_text(t) for t in texts], tokens, dimensions, fmt)

    def _rate_limit(self, req: EmbeddingRequest) -> Response | None:
        budget = self._requests()
        total = sum(req.tokens)
        kind, wait = "", 0.0
        if budget is not None and (wait := budget.wait_for(1)) > 0:
            kind, limit = "requests", budget.per_minute
        elif (wait := self._token_budget.wait_for(total)) > 0:
            kind, limit = "tokens", self._token_budget.per_minute
        if not kind:
            if budget is not None:
                budget.spend(1)
            self._token_budget.spend(total)
            return None
        unit = "RPM" if kind == "requests" else "TPM"
        message = (
            f"Rate limit reached for {req.model} in organization org-sandbox on {kind} per min "
            f"({unit}): Limit {int(limit)}, Requested {1 if kind == 'requests' else total}. "
            f"Please try again in {go_duration(wait)}. Visit "
            "https://platform.openai.com/account/rate-limits to learn more."
        )
        headers = self._limit_headers() | {
            "retry-after": str(max(1, math.ceil(wait))),
            "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
        }
        body = {"error": {"message": message, "type": kind, "param": None,
                          "code": "rate_limit_exceeded"}}
        return JSONResponse(body, 429, headers=headers)

    def _answer(self, req: EmbeddingRequest) -> Response:
        data = []
        for i, text in enumerate(req.texts):
            vector = embed_text(req.model, text, req.dimensions)
            encoded: Any = vector
            if req.encoding_format == "base64":
                encoded = base64.b64encode(array.array("f", vector).tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        total = sum(req.tokens)
        self._record(req, total)
        body = {"object": "list", "data": data, "model": req.model,
                "usage": {"prompt_tokens": total, "total_tokens": total}}
        return JSONResponse(body, headers=self._limit_headers())

    def _record(self, req: EmbeddingRequest, total: int) -> None:
        self.stats.succeeded += 1
        self.stats.inputs += len(req.texts)
        self.stats.tokens += total
        self.stats.batch_sizes.append(len(req.texts))
        self.stats.dimensions.append(req.dimensions)
        self.stats.encoding_formats.append(req.encoding_format)

    # --- budgets ----------------------------------------------------------------------
    def _requests(self) -> Budget | None:
        """The request budget for the current knob (rebuilt when the knob changes)."""
        rate = self.knobs.rate_limit
        if rate != self._request_rate:
            self._request_rate = rate
            if rate == 0:
                self._request_budget = None
            else:
                per_minute = DEFAULT_REQUESTS_PER_MINUTE if rate is None else rate * 60
                self._request_budget = _per_second_budget(per_minute, rate)
        return self._request_budget

    def _limit_headers(self) -> dict[str, str]:
        req = self._requests()
        tok = self._token_budget
        return {
            "x-ratelimit-limit-requests": str(int(req.per_minute) if req else 0),
            "x-ratelimit-remaining-requests": str(req.remaining() if req else 0),
            "x-ratelimit-reset-requests": go_duration(req.reset_seconds() if req else 0),
            "x-ratelimit-limit-tokens": str(int(tok.per_minute)),
            "x-ratelimit-remaining-tokens": str(tok.remaining()),
            "x-ratelimit-reset-tokens": go_duration(tok.reset_seconds()),
        }

    # --- control API ------------------------------------------------------------------
    async def _get_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats.__dict__)

    async def _reset_stats(self, request: Request) -> Response:
        self.stats = Stats()
        return JSONResponse(self.stats.__dict__)

    def _fault(self) -> Response:
        status = self.fail_status
        headers = {"retry-after": f"{self.retry_after:g}"} if status in (429, 503) else {}
        kind = {429: "rate_limit_exceeded", 503: "server_overloaded"}.get(status, "server_error")
        body = {"error": {"message": f"The server had an error (sandbox fault {status}).",
                          "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status, headers=headers)

    async def _put_faults(self, request: Request) -> Response:
        """``{"reject_marker": "POISON"}``: inputs containing it are refused with 400 (as OpenAI
        refuses an invalid input); ``{"status": 503, "times": n, "retry_after": 1}``: the next n
        requests get that status. ``{}`` clears both."""
        body = await request.json()
        self.reject_marker = str(body.get("reject_marker") or "")
        self.fail_status = int(body.get("status") or 0)
        self.fail_times = int(body.get("times", 1)) if self.fail_status else 0
        self.retry_after = float(body.get("retry_after", 1.0))
        return JSONResponse({"reject_marker": self.reject_marker, "status": self.fail_status,
                             "times": self.fail_times, "retry_after": self.retry_after})

    async def _put_limits(self, request: Request) -> Response:
        """``{"tokens_per_minute": N}`` (0 = unlimited); also refills both budgets."""
        body = await request.json()
        if "tokens_per_minute" in body:
            self.tokens_per_minute = int(body["tokens_per_minute"])
        self._token_budget = Budget(self.tokens_per_minute)
        self._request_rate = -1.0
        return JSONResponse({"tokens_per_minute": self.tokens_per_minute,
                             "rate_limit": self.knobs.rate_limit})


def _per_second_budget(per_minute: float, rate: float | None) -> Budget:
    # A knob of N/s allows a burst of N (at least 1), refilled at N per second, so a test that
    # sets rate_limit=1 sees its second immediate request refused; the default is per minute.
    return Budget(per_minute, None if rate is None else max(1.0, rate))


def _parse_input(value: Any) -> list[str | list[int]]:
    """One entry per input: a string, or a token array."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items = [value]  # a single token array
    elif isinstance(value, list) and value:
        items = value
    else:
        raise BadRequest(_INVALID_INPUT)
    if len(items) > MAX_INPUTS:
        raise BadRequest(_INVALID_INPUT)
    for item in items:
        valid_text = isinstance(item, str) and item != ""
        valid_tokens = (isinstance(item, list) and item
                        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                for t in item))
        if not (valid_text or valid_tokens):
            raise BadRequest(_INVALID_INPUT)
    return items


def _token_count(item: str | list[int], model: str) -> int:
    return len(item) if isinstance(item, list) else count_tokens(item, model)


def _as_text(item: str | list[int]) -> str:
    # Token arrays have no tokenizer here: their ids stand in for words.
    return item if isinstance(item, str) else " ".join(f"t{t}" for t in item)


def _check_tokens(tokens: list[int]) -> None:
    for count in tokens:
        if count > MAX_INPUT_TOKENS:
            # The API's current wording (reported 2026); before, it was "This model's maximum
            # context length is 8192 tokens, however you requested N tokens (...)". Same 400.
            raise BadRequest(f"Invalid 'input': maximum context length is {MAX_INPUT_TOKENS} tokens.")
    total = sum(tokens)
    if total > MAX_REQUEST_TOKENS:
        raise BadRequest(
            f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
            type_="max_tokens_per_request", code="max_tokens_per_request",
        )


def _parse_dimensions(model: str, value: Any) -> int:
    native = MODELS[model]
    if value is None:
        return native
    if model not in SHORTENABLE:
        raise BadRequest("This model does not support specifying dimensions.",
                         param="dimensions")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= native:
        raise BadRequest(
            f"Invalid value for 'dimensions' = {value}. Must be between 1 and {native}.",
            param="dimensions", code="invalid_value",
        )
    return value


def create(knobs: Knobs | None = None) -> OpenAISimulator:
    return OpenAISimulator(knobs)
