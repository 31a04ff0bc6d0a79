"""The HTTP app: prediction API, model list, health, Prometheus metrics, OpenAPI docs and a web page.

    POST /v1/predict   {"texts": [...], "model": NAME, "min_confidence": P} -> per text: label + every class
                       probability (``uncertain`` below P)
    POST /v1/explain   {"text": "...", "model": NAME, "target": LABEL} -> word-level attributions
    GET  /v1/models    the loaded models with their labels and metrics
    GET  /health       liveness and readiness
    GET  /metrics      Prometheus metrics (requests, latency, batch sizes)
    GET  /docs         API docs, rendered from the OpenAPI schema on the server (no CDN: works offline)
    GET  /openapi.json the OpenAPI schema
    GET  /             the web page

Every error, whatever its cause, is a JSON ``{"error": {"type": ..., "message": ...}}``: a 4xx for a bad
request (415 for a POST body that is not ``application/json``, 400 for a Host header the server does not
serve), 503 (with ``Retry-After``) while the queue is full or the server is starting or stopping, 504 when a
request waits longer than its timeout, and 500 when the model fails on a request or anything else goes
wrong (the cause is logged, never sent). No response carries NaN or infinity: a prediction with a
non-finite probability is a 500 ``non_finite_output`` for that request; non-finite metrics in
``/v1/models`` are sent as null.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..inference.engines import ModelRegistry, valid_name
from ..inference.format import abstain
from ..version import __version__
from .batcher import Closed, MicroBatcher, QueueFull
from .docs import docs_html

log = logging.getLogger("emotune.serve")


@dataclass
class Limits:
    """What one request may hold; anything beyond is refused with a 4xx before any work is done."""

    max_texts: int = 64
    max_chars: int = 2000
    max_body_bytes: int = 1_000_000
    timeout_s: Optional[float] = 30.0  # a request waiting longer (queue + inference) gets 504; None: no limit


@dataclass
class BatchConfig:
    """Micro-batching: at most ``max_batch`` texts per forward pass, gathered for at most ``max_wait_ms``;
    ``workers`` batches run side by side, each with ``threads_per_worker`` PyTorch threads (default: the
    process's threads shared out). At most ``max_queue`` requests wait for or are in inference; more get 503
    with ``Retry-After: retry_after_s`` (None: no bound)."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    workers: int = 1
    threads_per_worker: Optional[int] = None
    max_queue: Optional[int] = 256
    retry_after_s: int = 1


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str):
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def error_response(status: int, type_: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status, headers=headers)


def finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


# ---- request and response schemas (also the OpenAPI docs) ----------------------------------------
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(..., description="Texts to classify.",
                                   examples=[["i feel wonderful today", "this is terrifying"]])
    model: Optional[StrictStr] = Field(None, description="Name of a loaded model (GET /v1/models); "
                                                         "default: the first one.")
    min_confidence: Optional[float] = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                            description="Abstain below this: a class answer whose top "
                                                        "(calibrated) probability is lower has label "
                                                        "`uncertain` and its best guess in `best_guess`.")


class Prediction(BaseModel):
    label: str = Field(..., description="The most probable class (`uncertain` below min_confidence).")
    probabilities: dict[str, float] = Field(..., description="Every class's probability (they sum to 1; "
                                                              "calibrated when the run fitted a calibration).")
    best_guess: Optional[str] = Field(None, description="With label `uncertain`: the most probable class.")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr = Field(..., description="The text to explain.", examples=["i am furious about this"])
    model: Optional[StrictStr] = Field(None, description="Name of a loaded model; default: the first one.")
    target: Optional[StrictStr] = Field(None, description="A label (task:label in multi-task runs) or regression "
                                                          "target; default: the predicted class.")
    method: Literal["ig", "gxi"] = Field("ig", description="ig: Integrated Gradients; gxi: gradient x input "
                                                          "(one backward pass, rougher).")
    steps: int = Field(20, ge=1, le=100, description="Integrated Gradients steps.")


class Word(BaseModel):
    word: str
    start: int = Field(..., description="Character offset of the word in the text.")
    end: int
    score: float = Field(..., description="> 0: pushed towards the target; < 0: away from it.")


class ExplainResponse(BaseModel):
    model: str
    target: str
    predicted: str
    value: float = Field(..., description="The target's probability (or value) for this text.")
    method: str
    words: list[Word]
    convergence_delta: Optional[float] = None
    ms: float


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- ASGI middleware -------------------------------------------------------------------------------
async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (declared or streamed), before the app reads them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = {"error": {"type": "body_too_large",
                               "message": f"the request body is over {self.max_bytes:,} bytes"}}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _send_json(send, 400, {"error": {"type": "bad_request",
                                                              "message": "invalid Content-Length"}})
            if int(declared) > self.max_bytes:
                return await _send_json(send, 413, too_large)
        chunks, size = [], 0
        while True:  # buffer the body (bounded): the app then sees it whole
            message = await receive()
            if message["type"] != "http.request":
                return  # the client disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_json(send, 413, too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


HOST_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::[0-9]{1,5})?$")


def _host_name(header: str | None) -> str | None:
    """The host of a Host header (lower case, an IPv6 address without brackets), None when malformed."""
    m = HOST_RE.match(header or "")
    return None if m is None else (m["v6"] or m["name"]).lower()


class TrustedHost(TrustedHostMiddleware):
    """Starlette's Host header check, answering in JSON: requests whose Host is not one the server serves
    are refused (400), so a page on another site cannot reach a server on loopback through a browser by
    DNS rebinding. ``["*"]`` allows any host."""

    def __init__(self, app, allowed_hosts):
        super().__init__(app, allowed_hosts=list(allowed_hosts), www_redirect=False)

    async def __call__(self, scope, receive, send):
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = _host_name(Headers(scope=scope).get("host"))
        if host is not None and any(host == p.strip("[]") or (p.startswith("*.") and host.endswith(p[1:]))
                                    for p in self.allowed_hosts):
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await send({"type": "websocket.close", "code": 1008})
        return await _send_json(send, 400, {"error": {"type": "invalid_host", "message": "the Host header names "
                                                      "a host this server does not serve (see --allowed-host)"}})


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    PATHS = {"/v1/predict", "/v1/explain", "/v1/models", "/health", "/metrics", "/", "/docs", "/openapi.json"}

    def __init__(self, batcher_pending):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("emotune_requests_total", "HTTP requests by path and status.",
                                ["method", "path", "status"], registry=self.registry)
        self.latency = Histogram("emotune_request_duration_seconds", "HTTP request latency.", ["method", "path"],
                                 buckets=(.002, .005, .01, .025, .05, .075, .1, .15, .2, .25, .35, .5, .75, 1,
                                          2.5, 5, 10), registry=self.registry)
        self.batch_size = Histogram("emotune_batch_size", "Texts per forward pass (micro-batch).", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_seconds = Histogram("emotune_batch_duration_seconds", "Time of one micro-batch's inference.",
                                       ["model"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5),
                                       registry=self.registry)
        self.texts = Counter("emotune_texts_total", "Texts classified.", ["model"], registry=self.registry)
        pending = Gauge("emotune_pending_requests", "Requests waiting for or in inference.", registry=self.registry)
        pending.set_function(batcher_pending)

    def on_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_seconds.labels(model).observe(seconds)
        self.texts.labels(model).inc(size)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def middleware(self, app):
        metrics = self

        async def wrapped(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path = scope["path"] if scope["path"] in metrics.PATHS else "other"
            method = scope["method"] if scope["method"] in ("GET", "POST", "HEAD") else "other"
            status = {"code": 500}
            start = time.perf_counter()

            async def send_wrapper(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                metrics.latency.labels(method, path).observe(time.perf_counter() - start)
                metrics.requests.labels(method, path, str(status["code"])).inc()

        return wrapped


# ---- the app ---------------------------------------------------------------------------------------
ERRORS = {400: {"model": ErrorResponse, "description": "Malformed JSON, invalid UTF-8 or a Host the server does "
                                                       "not serve."},
          404: {"model": ErrorResponse, "description": "No loaded model has that name."},
          413: {"model": ErrorResponse, "description": "Too many texts, a text too long, or a body too large."},
          415: {"model": ErrorResponse, "description": "The body is not sent as Content-Type: application/json."},
          422: {"model": ErrorResponse, "description": "Wrong JSON types, an empty list or text, a bad model name."},
          500: {"model": ErrorResponse, "description": "The model failed on this request, or gave a non-finite "
                                                       "probability."},
          503: {"model": ErrorResponse, "description": "The queue is full (retry after Retry-After seconds), or "
                                                       "the server is starting or shutting down."},
          504: {"model": ErrorResponse, "description": "The request waited longer than the server's timeout."}}


def page_html() -> str:
    return resources.files("emotune.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(registry: ModelRegistry, *, limits: Limits | None = None,
               batching: BatchConfig | None = None, allowed_hosts: Optional[list[str]] = None) -> FastAPI:
    """The app serving ``registry``. ``allowed_hosts``: the Host header values it answers (``*.example.com``
    patterns allowed); None or ``["*"]``: any (``emotune serve`` passes the bound host, plus localhost and
    127.0.0.1 on loopback)."""
    limits = limits or Limits()
    batching = batching or BatchConfig()
    batcher_box: dict[str, MicroBatcher] = {}
    state = {"ready": False}
    metrics = Metrics(lambda: batcher_box["b"].pending if "b" in batcher_box else 0)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        per_worker = batching.threads_per_worker or max(1, torch.get_num_threads() // batching.workers)
        batcher = MicroBatcher(registry, max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms,
                               workers=batching.workers, threads_per_worker=per_worker,
                               max_queue=batching.max_queue, on_batch=metrics.on_batch)
        await batcher.start()
        batcher_box["b"] = batcher
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.close()  # in-flight requests finish first

    app = FastAPI(title="emotune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Emotion and sentiment classification with trained emotune runs.")
    app.state.registry = registry
    app.state.limits = limits

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.type, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", _describe(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "the server failed on this request (the cause is in its log)")

    request_schema = PredictRequest.model_json_schema()

    def check_text(i: int, t: str) -> None:
        if len(t) > limits.max_chars:
            raise ApiError(413, "text_too_long", f"text {i + 1} has {len(t):,} characters; "
                                                 f"at most {limits.max_chars:,}")
        if not t.strip():
            raise ApiError(422, "empty_text", f"text {i + 1} is empty")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            raise ApiError(422, "invalid_text", f"text {i + 1} is not valid Unicode") from None

    def model_name(requested: Optional[str]) -> str:
        name = requested if requested is not None else registry.default
        if not valid_name(name):
            raise ApiError(422, "invalid_model_name", "a model name is a plain name of a loaded model "
                                                      "(letters, digits, '.', '_', '-'); see GET /v1/models")
        if name not in registry:
            raise ApiError(404, "unknown_model", f"no model named {name!r} is loaded; "
                                                 f"loaded: {', '.join(registry.names)}")
        return name

    def check_json(request: Request) -> None:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as JSON with the header "
                                                          "Content-Type: application/json")

    explainers: dict[str, object] = {}
    explain_lock = asyncio.Lock()  # one explanation at a time: each takes both cores for a moment

    @app.post("/v1/explain", response_model=ExplainResponse, responses=ERRORS,  # type: ignore[arg-type]
              summary="Explain a prediction",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": ExplainRequest.model_json_schema()}}}})
    async def explain(request: Request):
        """Word-level attributions (Integrated Gradients, sub-word pieces merged) for one text: positive scores
        pushed towards the target (default: the predicted class), negative ones away from it."""
        from ..errors import EmotuneError
        from ..inference.explain import Explainer

        check_json(request)
        req = _parse(await request.body(), ExplainRequest)
        name = model_name(req.model)
        check_text(0, req.text)
        if req.target is not None and req.target not in registry[name].labels:
            raise ApiError(422, "unknown_target", f"model {name!r} has no target {req.target!r}; its targets: "
                                                  f"{', '.join(registry[name].labels)}")
        if not state["ready"]:
            raise ApiError(503, "unavailable", "the server is starting or shutting down")

        def work() -> dict:
            if name not in explainers:
                explainers[name] = Explainer(registry[name].run)
            return explainers[name].explain(req.text, req.target, req.method, req.steps).as_dict()

        try:
            async with explain_lock:
                result = await asyncio.wait_for(asyncio.to_thread(work), limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no explanation within {limits.timeout_s:g} s") from None
        except EmotuneError as e:  # e.g. an ensemble or a classic model: nothing to attribute on
            raise ApiError(422, "not_explainable", str(e)) from None
        result.pop("text", None)
        return JSONResponse(finite({"model": name, **result}))

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,  # type: ignore[arg-type]
              summary="Classify texts",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": request_schema}}}})
    async def predict(request: Request):
        """Per text, the most probable label and every class's probability."""
        check_json(request)
        req = _parse(await request.body(), PredictRequest)
        name = model_name(req.model)
        texts = req.texts
        if not texts:
            raise ApiError(422, "no_texts", "texts is empty: send at least one text")
        if len(texts) > limits.max_texts:
            raise ApiError(413, "too_many_texts", f"{len(texts)} texts; at most {limits.max_texts} per request")
        for i, t in enumerate(texts):
            check_text(i, t)
        if not state["ready"]:
            raise ApiError(503, "unavailable", "the server is starting or shutting down")
        batcher = batcher_box["b"]
        try:
            probs = await asyncio.wait_for(batcher.submit(name, texts), limits.timeout_s)
        except Closed:
            raise ApiError(503, "unavailable", "the server is shutting down") from None
        except QueueFull:
            return error_response(503, "overloaded", f"the server is busy ({batcher.pending} requests waiting); "
                                                     f"retry in {batching.retry_after_s} s",
                                  {"Retry-After": str(batching.retry_after_s)})
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no answer within {limits.timeout_s:g} s: the server is busy or the "
                                           "texts are too long for it") from None
        except Exception as e:  # noqa: BLE001 - the model failed on this request (its neighbours were retried)
            log.error("model %s failed on a request", name, exc_info=e)
            raise ApiError(500, "inference_failed", f"model {name!r} failed on this request "
                                                    "(the cause is in the server's log)") from None
        labels = registry[name].labels
        bad = (~torch.isfinite(probs).all(dim=-1)).nonzero().flatten().tolist()
        if bad:
            raise ApiError(500, "non_finite_output", f"model {name!r} gave a non-finite probability for text "
                                                     f"{bad[0] + 1}; no answer is sent for this request")
        served = registry[name]
        rows = served.run.task.format(probs, labels, state=served.task_state)
        if req.min_confidence:
            rows = [abstain(row, req.min_confidence) for row in rows]
        return JSONResponse({"model": name, "predictions": rows})

    @app.get("/v1/models", summary="Loaded models")
    async def models():
        """The models a request can name, with their labels, method, base model and metrics."""
        return JSONResponse(finite({
            "default": registry.default, "models": [registry[n].describe() for n in registry.names],
            "limits": {"max_texts": limits.max_texts, "max_chars": limits.max_chars,
                       "max_body_bytes": limits.max_body_bytes, "timeout_s": limits.timeout_s,
                       "max_queue": batching.max_queue}}))

    @app.get("/health", summary="Health")
    async def health():
        if not state["ready"]:
            return error_response(503, "unavailable", "starting or shutting down")
        return {"status": "ok", "models": registry.names, "pending": batcher_box["b"].pending}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(page_html())

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return HTMLResponse(docs_html(app.openapi()))

    # The last added runs first: metrics see every answer, including hosts refused and bodies too large.
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(TrustedHost, allowed_hosts=allowed_hosts)
    app.add_middleware(_Wrap, wrap=metrics.middleware)
    app.state.metrics = metrics
    return app


class _Wrap:
    """Adapter so a plain ``wrap(app) -> asgi`` function can be added with ``add_middleware``."""

    def __init__(self, app, wrap):
        self.inner = wrap(app)

    async def __call__(self, scope, receive, send):
        await self.inner(scope, receive, send)


def _parse(body: bytes, schema: type[BaseModel]):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_utf8", f"the body is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e.msg} at position {e.pos}") from None
    except (ValueError, RecursionError):  # an integer with too many digits, nesting too deep
        raise ApiError(400, "invalid_json", "the body is not JSON this server accepts") from None
    if not isinstance(obj, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object (see /docs)")
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", _describe(e.errors())) from None


def _describe(errors) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)
