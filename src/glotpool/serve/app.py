"""The HTTP side of ``glotpool serve``: a FastAPI app with OpenAI-compatible routes, errors and Prometheus metrics.

Routes (``/v1/*`` and ``/embed`` need ``Authorization: Bearer KEY`` when an API key is set; ``/health`` and
``/metrics`` never do, so probes and scrapers work):

    POST /v1/embeddings   OpenAI's request and response: {"model", "input": str | [str], "encoding_format":
                          "float" | "base64", "dimensions"?} -> {"object": "list", "data": [{"object": "embedding",
                          "embedding", "index"}], "model", "usage": {"prompt_tokens", "total_tokens"}}
    POST /v1/classify     {"model", "input": str | [str] | [[a, b], ...] (pair heads)} -> per input the label and
                          the per-class probabilities (columns follow "labels")
    POST /v1/similarity   {"model", "pairs": [[a, b], ...]} -> cosine per pair; or {"model", "input": [...],
                          "input2"?: [...]} -> the cosine matrix (rows: input, columns: input2 or input)
    POST /embed           text-embeddings-inference's native form: {"inputs": str | [str]} -> [[float]]
    GET  /v1/models       OpenAI's model list (+ dim, pooler, backbone, task_type, labels, max_input_tokens)
    GET  /health          200 {"status": "ok"} once every model is loaded; 503 while loading or draining
    GET  /metrics         Prometheus text format

Every error is OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}``: 400 malformed JSON, an empty or
whitespace text (its index named), or a bad field value; 422 a field of the wrong type or missing; 401 a missing or
wrong API key; 404 an unknown model (the served ones listed) or route; 413 too many inputs, or a text over the
model's token limit unless ``auto_truncate``; 429 a full queue (with ``Retry-After``); 503 loading / shutting down.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from glotpool.serve.batching import Batcher, BatchStats, QueueFull, ShuttingDown
from glotpool.serve.registry import ModelRegistry, parse_model_spec

log = logging.getLogger("glotpool.serve")

_INLINE_TOKENIZE = 64  # requests with more texts are tokenized in a thread, not on the event loop
_SHOWN = 10


@dataclass
class ServeSettings:
    """Everything ``glotpool serve`` is configured with (the CLI flags, one for one)."""
    models: list[str] = field(default_factory=list)   # NAME=PATH specs
    normalize: bool = True             # unit-length embeddings (as OpenAI's)
    api_key: str | None = None
    max_batch_tokens: int = 4096       # padded tokens per backbone batch (rows x longest)
    max_batch_requests: int = 128      # distinct requests per batch (1 = no batching)
    max_wait_ms: float = 2.0           # how long an idle worker waits for more requests to batch
    batch_overhead_tokens: int | None = None  # a batch's fixed cost in padded tokens (None: 256 CPU, 8192 GPU)
    max_queue: int = 512               # unfinished requests per model before 429
    max_inputs: int = 512              # texts per request before 413
    auto_truncate: bool = False        # truncate over-long texts instead of 413
    retry_after_s: int = 1
    device: str = "auto"
    dtype: str | None = None           # auto | bfloat16 | float16 | float32: backbone autocast (as encode --dtype)
    check_backbone: bool = True
    drain_timeout_s: float = 30.0


# ----------------------------------------------------------------------------------------------------------------
# errors


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def _error_body(message: str, type: str, param=None, code=None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


def _json(obj, status: int = 200, headers: dict | None = None, body: str | None = None):
    from fastapi.responses import Response

    body = json.dumps(obj, separators=(",", ":")) if body is None else body
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _json_off_loop(obj, rows: int):
    """A large response (many float vectors) is serialized in a thread, so the event loop keeps accepting."""
    if rows <= _INLINE_TOKENIZE:
        return _json(obj)
    return _json(None, body=await asyncio.to_thread(json.dumps, obj, separators=(",", ":")))


def error_response(e: APIError):
    from fastapi.responses import Response

    return Response(_error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers,
                    media_type="application/json")


# ----------------------------------------------------------------------------------------------------------------
# request bodies (extra fields are ignored, as OpenAI's clients may send more)

Texts = Union[StrictStr, list[StrictStr]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = None


class EmbeddingRequest(_Body):
    input: Texts
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, strict=True)
    user: StrictStr | None = None


class ClassifyRequest(_Body):
    input: Union[StrictStr, list[StrictStr], list[list[StrictStr]]]


class SimilarityRequest(_Body):
    pairs: list[list[StrictStr]] | None = None
    input: list[StrictStr] | None = None
    input2: list[StrictStr] | None = None


class EmbedRequest(_Body):  # text-embeddings-inference's /embed
    inputs: Texts
    normalize: bool | None = None
    truncate: bool | None = None


# ----------------------------------------------------------------------------------------------------------------
# metrics


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        lat = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)
        self.requests = Counter("glotpool_requests_total", "HTTP requests", ["endpoint", "method", "status"],
                                registry=r)
        self.latency = Histogram("glotpool_request_duration_seconds", "HTTP request latency",
                                 ["endpoint", "method", "status"], buckets=lat, registry=r)
        sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
        self.batch_size = Histogram("glotpool_batch_size", "texts per backbone batch", ["model"], buckets=sizes,
                                    registry=r)
        self.batch_requests = Histogram("glotpool_batch_requests", "requests sharing a backbone batch", ["model"],
                                        buckets=sizes, registry=r)
        toks = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
        self.batch_tokens = Histogram("glotpool_batch_tokens", "real tokens per backbone batch", ["model"],
                                      buckets=toks, registry=r)
        self.batch_padded = Histogram("glotpool_batch_padded_tokens", "padded tokens (rows x longest) per batch",
                                      ["model"], buckets=toks, registry=r)
        self.batch_seconds = Histogram("glotpool_batch_duration_seconds", "backbone + pooler time per batch",
                                       ["model"], buckets=lat, registry=r)
        self.queue_depth = Gauge("glotpool_queue_depth", "requests waiting for a batch", ["model"], registry=r)
        self.in_flight = Gauge("glotpool_requests_in_flight", "accepted, unfinished requests", ["model"],
                               registry=r)
        self.tokens = Counter("glotpool_input_tokens_total", "input tokens processed", ["model"], registry=r)
        self.ready = Gauge("glotpool_ready", "1 once every model is loaded and the server is not draining",
                           registry=r)

    def on_batch(self, s: BatchStats) -> None:
        self.batch_size.labels(s.model).observe(s.rows)
        self.batch_requests.labels(s.model).observe(s.requests)
        self.batch_tokens.labels(s.model).observe(s.tokens)
        self.batch_padded.labels(s.model).observe(s.padded_tokens)
        self.batch_seconds.labels(s.model).observe(s.seconds)

    def on_queue(self, model: str, waiting: int, unfinished: int) -> None:
        self.queue_depth.labels(model).set(waiting)
        self.in_flight.labels(model).set(unfinished)


# ----------------------------------------------------------------------------------------------------------------
# state


class ServerState:
    """Models, batchers and readiness. Models load in a thread so ``/health`` answers (503) while they load."""

    def __init__(self, settings: ServeSettings, registry: ModelRegistry | None = None):
        self.settings = settings
        self.metrics = Metrics()
        self.registry = registry
        self.batchers: dict[str, Batcher] = {}
        self.status = "loading"          # loading | ok | draining | failed
        self.error: str | None = None
        self.created = int(time.time())
        self.on_fatal = None             # called with the exception when loading fails (the CLI exits)
        self._loader: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def load(self) -> None:
        try:
            if self.registry is None:
                specs = [parse_model_spec(s) for s in self.settings.models]
                if not specs:
                    raise ValueError("no models to serve: give --model NAME=PATH at least once")
                reg = ModelRegistry(device=self.settings.device, check_backbone=self.settings.check_backbone)
                for spec in specs:
                    t0 = time.perf_counter()
                    reg.add(spec)
                    log.info("loaded model %s (%s) in %.1f s", spec.name, spec.path, time.perf_counter() - t0)
                self.registry = reg
            s = self.settings
            for name, enc in self.registry.models.items():
                embed = (lambda feats, enc=enc: enc.embed_features(feats, s.dtype))
                overhead = s.batch_overhead_tokens
                if overhead is None:
                    overhead = 256 if enc.backbone.device.type == "cpu" else 8192
                self.batchers[name] = Batcher(name, embed, s.max_batch_tokens, s.max_batch_requests, s.max_wait_ms,
                                              s.max_queue, overhead, self.metrics.on_batch,
                                              self.metrics.on_queue).start()
                self.metrics.on_queue(name, 0, 0)
            if self.status == "loading":
                self.status = "ok"
                self.metrics.ready.set(1)
                log.info("ready: serving %s", ", ".join(self.registry.models))
        except Exception as e:  # noqa: BLE001
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("could not load the models: %s", self.error)
            if self.on_fatal is not None:
                self.on_fatal(e)

    def start_loading(self) -> None:
        self._loader = threading.Thread(target=self.load, name="glotpool-load", daemon=True)
        self._loader.start()

    def begin_drain(self) -> None:
        if self.status in ("ok", "loading"):
            self.status = "draining"
        self.metrics.ready.set(0)

    def close(self) -> None:
        """Stop accepting, finish every accepted request, stop the workers."""
        self.begin_drain()
        if self._loader is not None:
            self._loader.join(self.settings.drain_timeout_s)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        for b in self.batchers.values():
            if not b.close(max(0.0, deadline - time.monotonic())):
                log.error("model %s: the inference worker did not finish within %.0f s", b.name,
                          self.settings.drain_timeout_s)

    # --- per request ---------------------------------------------------------------------------------------------
    def check_ready(self) -> None:
        if self.status == "loading":
            raise APIError(503, "the models are still loading; retry shortly (GET /health turns 200 when ready)",
                           "server_error", code="loading", headers={"Retry-After": "5"})
        if self.status == "failed":
            raise APIError(503, f"the models failed to load: {self.error}", "server_error", code="load_failed")

    def check_capacity(self, batcher: Batcher) -> None:
        if batcher.full():
            raise APIError(429, f"model {batcher.name!r} has {batcher.unfinished} requests in flight (--max-queue "
                                f"{batcher.max_queue}); retry after {self.settings.retry_after_s} s",
                           "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(self.settings.retry_after_s)})

    def resolve(self, name: str | None):
        self.check_ready()
        models = self.registry.models
        if name is None:
            if len(models) == 1:
                name = next(iter(models))
            else:
                raise APIError(400, f"'model' is required: this server serves {len(models)} models "
                                    f"({', '.join(models)})", param="model", code="missing_model")
        if name not in models:
            raise APIError(404, f"The model '{name}' does not exist; this server serves: {', '.join(models)}",
                           param="model", code="model_not_found")
        return name, models[name], self.batchers[name]

    def check_texts(self, texts: list[str], param: str = "input", index_of=None) -> None:
        if not texts:
            raise APIError(400, f"'{param}' is empty: give at least one text", param=param, code="empty_input")
        if len(texts) > self.settings.max_inputs:
            raise APIError(413, f"'{param}' holds {len(texts)} texts; at most {self.settings.max_inputs} per "
                                f"request (--max-inputs): split it into several requests", param=param,
                           code="too_many_inputs")
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            where = [index_of(i) if index_of else f"{param}[{i}]" for i in empty[:_SHOWN]]
            more = f" (+{len(empty) - _SHOWN} more)" if len(empty) > _SHOWN else ""
            raise APIError(400, f"{', '.join(where)}{more} {'is' if len(empty) == 1 else 'are'} empty or whitespace "
                                f"only: an empty text has no tokens to embed", param=param, code="empty_input")

    async def tokenize(self, enc, texts: list[str], param: str = "input", index_of=None, truncate=None):
        """-> (features per text, token count per text); 413 for a text over the limit unless truncating."""
        check = lambda: self._tokenize(enc, texts, param, index_of, truncate)  # noqa: E731
        return await asyncio.to_thread(check) if len(texts) > _INLINE_TOKENIZE else check()

    def _tokenize(self, enc, texts, param, index_of, truncate):
        limit = enc.backbone.config.max_length
        tok = enc.tokenize(texts, truncation=False)
        keys = list(tok.keys())
        ids = tok["input_ids"]
        over = [i for i, x in enumerate(ids) if len(x) > limit]
        if over:
            truncate = self.settings.auto_truncate if truncate is None else truncate
            if not truncate:
                where = [(index_of(i) if index_of else f"{param}[{i}]") + f" ({len(ids[i])} tokens)"
                         for i in over[:_SHOWN]]
                raise APIError(413, f"{', '.join(where)} exceed{'s' if len(over) == 1 else ''} the model's limit of "
                                    f"{limit} tokens; shorten {'it' if len(over) == 1 else 'them'}, or start the "
                                    f"server with --auto-truncate", param=param, code="input_too_long")
            short = enc.tokenize([texts[i] for i in over])  # the same truncation Encoder.encode applies
            for k in keys:
                col = tok[k]
                for j, i in enumerate(over):
                    col[i] = short[k][j]
        features = [{k: tok[k][i] for k in keys} for i in range(len(texts))]
        return features, [len(x) for x in tok["input_ids"]]

    async def run(self, name: str, batcher: Batcher, features, lengths, finish):
        try:
            fut = batcher.submit(features, lengths, finish)
        except QueueFull as e:
            raise APIError(429, f"{e}; retry after {self.settings.retry_after_s} s", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        except ShuttingDown as e:
            raise APIError(503, f"{e}; retry on another replica", "server_error", code="shutting_down") from None
        try:
            result = await fut
        except APIError:
            raise
        except Exception as e:  # noqa: BLE001
            raise APIError(500, f"inference failed: {type(e).__name__}: {e}", "server_error",
                           code="inference_failed") from None
        self.metrics.tokens.labels(name).inc(sum(lengths))
        return result


def _as_list(x) -> list:
    return [x] if isinstance(x, str) else list(x)


def _usage(lengths) -> dict:
    n = int(sum(lengths))
    return {"prompt_tokens": n, "total_tokens": n}


def _finish_embeddings(z: torch.Tensor, dimensions: int | None, normalize: bool, fmt: str):
    if dimensions is not None:
        z = z[:, :dimensions]
    if normalize:
        z = F.normalize(z, dim=-1)
    a = np.ascontiguousarray(z.numpy(), dtype="<f4")
    if fmt == "base64":
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in a]
    return a.tolist()


# ----------------------------------------------------------------------------------------------------------------
# the app


def create_app(settings: ServeSettings, registry: ModelRegistry | None = None):
    """The FastAPI app. ``registry``: already loaded models (else ``settings.models`` load at startup, in a thread)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    state = ServerState(settings, registry)

    @asynccontextmanager
    async def lifespan(app):
        state.start_loading()
        yield
        await asyncio.to_thread(state.close)

    app = FastAPI(title="glotpool serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.glot = state

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = loc[0] if loc else None  # the field (a union's member tags and list indices follow it in loc)
        if first.get("type") == "json_invalid":
            return error_response(APIError(400, f"the request body is not valid JSON: {first.get('msg')}",
                                           code="invalid_json"))
        if first.get("type") == "missing" and not loc:
            return error_response(APIError(400, "the request needs a JSON body", code="missing_body"))
        msg = "; ".join(f"{'.'.join(str(p) for p in er.get('loc', ()) if p != 'body') or 'body'}: {er.get('msg')}"
                        for er in errs[:_SHOWN])
        return error_response(APIError(422, f"invalid request: {msg}", param=param,
                                       code="missing_field" if first.get("type") == "missing" else "invalid_type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        msg = (f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail))
        return error_response(APIError(e.status_code, msg, code=code, headers=getattr(e, "headers", None)))

    # --- routes --------------------------------------------------------------------------------------------------
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        name, enc, batcher = state.resolve(body.model)
        texts = _as_list(body.input)
        state.check_texts(texts)
        dims = body.dimensions
        if dims is not None and not 1 <= dims <= enc.dim:
            raise APIError(400, f"'dimensions' must be between 1 and {enc.dim} for model '{name}', got {dims}",
                           param="dimensions", code="invalid_value")
        state.check_capacity(batcher)  # a full queue answers 429 before any tokenizing
        features, lengths = await state.tokenize(enc, texts)
        fmt, norm = body.encoding_format, settings.normalize
        rows = await state.run(name, batcher, features, lengths,
                               lambda z: _finish_embeddings(z, dims, norm, fmt))
        return await _json_off_loop({"object": "list", "model": name, "usage": _usage(lengths), "data": [
            {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)]}, len(rows))

    @app.post("/embed")
    async def embed(body: EmbedRequest):
        name, enc, batcher = state.resolve(body.model)
        texts = _as_list(body.inputs)
        state.check_texts(texts, "inputs")
        features, lengths = await state.tokenize(enc, texts, "inputs", truncate=body.truncate)
        norm = settings.normalize if body.normalize is None else body.normalize
        rows = await state.run(name, batcher, features, lengths, lambda z: _finish_embeddings(z, None, norm, "float"))
        return await _json_off_loop(rows, len(rows))

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        name, enc, batcher = state.resolve(body.model)
        head = enc.head
        if head is None or not head.is_classification:
            raise APIError(400, f"model '{name}' has no classifier head (task type {enc.task_type!r}); classify "
                                f"needs a model trained on a 'single' or 'pair' task; use /v1/embeddings or "
                                f"/v1/similarity", param="model", code="not_a_classifier")
        items = _as_list(body.input)
        is_pairs = bool(items) and isinstance(items[0], list)
        if head.is_pair:
            if not is_pairs or any(len(p) != 2 for p in items):
                bad = next((i for i, p in enumerate(items) if not isinstance(p, list) or len(p) != 2), 0)
                raise APIError(400, f"model '{name}' is a pair classifier: send 'input' as [[text_a, text_b], ...] "
                                    f"(input[{bad}] is not a pair)", param="input", code="invalid_value")
            n = len(items)
            texts = [p[0] for p in items] + [p[1] for p in items]
            index_of = lambda i: f"input[{i % n}][{i // n}]"  # noqa: E731
        else:
            if is_pairs:
                raise APIError(400, f"model '{name}' is a single-sentence classifier: send 'input' as a string or "
                                    f"a list of strings, not pairs", param="input", code="invalid_value")
            n, texts, index_of = len(items), items, None
        state.check_texts(texts, index_of=index_of)
        features, lengths = await state.tokenize(enc, texts, index_of=index_of)
        names = enc.label_names or [str(i) for i in range(head.config.num_labels)]

        def finish(z):
            logits = enc.logits_from_vectors(z[:n], z[n:] if head.is_pair else None)
            return torch.softmax(logits, dim=-1).numpy().astype(float)

        proba = await state.run(name, batcher, features, lengths, finish)
        data = [{"object": "classification", "index": i, "label": names[int(p.argmax())],
                 "score": float(p.max()), "probs": p.tolist()} for i, p in enumerate(proba)]
        return _json({"object": "list", "model": name, "labels": names, "data": data, "usage": _usage(lengths)})

    @app.post("/v1/similarity")
    async def similarity(body: SimilarityRequest):
        name, enc, batcher = state.resolve(body.model)
        if (body.pairs is None) == (body.input is None):
            raise APIError(400, "give either 'pairs' ([[a, b], ...]: one cosine per pair) or 'input' (and optionally "
                                "'input2': the cosine matrix)", param="pairs", code="invalid_value")
        if body.pairs is not None:
            bad = [i for i, p in enumerate(body.pairs) if len(p) != 2]
            if bad:
                raise APIError(400, f"pairs[{bad[0]}] has {len(body.pairs[bad[0]])} texts, not 2", param="pairs",
                               code="invalid_value")
            n = len(body.pairs)
            texts = [p[0] for p in body.pairs] + [p[1] for p in body.pairs]
            index_of = lambda i: f"pairs[{i % n}][{i // n}]"  # noqa: E731
            param, split = "pairs", n
        else:
            a, b = body.input, body.input2
            texts = a + (b or [])
            index_of = (lambda i: f"input[{i}]" if i < len(a) else f"input2[{i - len(a)}]")  # noqa: E731
            param, split = "input", len(a)
            if b is not None and not b:
                raise APIError(400, "'input2' is empty", param="input2", code="empty_input")
        state.check_texts(texts, param, index_of=index_of)
        features, lengths = await state.tokenize(enc, texts, param, index_of=index_of)
        pairwise = body.pairs is not None
        cross = body.input2 is not None

        def finish(z):
            z = F.normalize(z, dim=-1)
            if pairwise:
                return (z[:split] * z[split:]).sum(-1).numpy().astype(float)
            za = z[:split]
            return (za @ (z[split:] if cross else za).T).numpy().astype(float)

        s = await state.run(name, batcher, features, lengths, finish)
        if pairwise:
            data = [{"object": "similarity", "index": i, "score": float(v)} for i, v in enumerate(s)]
        else:
            data = [{"object": "similarity", "index": i, "scores": row.tolist()} for i, row in enumerate(s)]
        return _json({"object": "list", "model": name, "data": data, "usage": _usage(lengths)})

    def _model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": state.created, "owned_by": "glotpool",
                **state.registry.describe(name)}

    @app.get("/v1/models")
    async def models():
        state.check_ready()
        return _json({"object": "list", "data": [_model_card(n) for n in state.registry.models]})

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        state.resolve(name)
        return _json(_model_card(name))

    @app.get("/health")
    async def health():
        if state.status == "ok":
            return _json({"status": "ok", "models": list(state.registry.models),
                          "backbones": len(state.registry.backbones)})
        body = {"status": state.status}
        if state.error:
            body["error"] = state.error
        return _json(body, status=503)

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return MetricsAndAuth(app, state)


class MetricsAndAuth:
    """ASGI wrapper: API-key check before any body is read, and request count / latency per endpoint and status."""

    OPEN = ("/health", "/metrics")

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state
        key = state.settings.api_key
        self._key = key.encode() if key else None

    @property
    def fastapi(self):
        return self.app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if scope.get("method") == "POST":
            scope = self._json_by_default(scope)
        try:
            if self._key is not None and scope["path"] not in self.OPEN and not self._authorized(scope):
                await self._reject(send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or ("auth" if status[0] == 401 else "unmatched")
            m = self.state.metrics
            labels = (endpoint, scope.get("method", ""), str(status[0]))
            m.requests.labels(*labels).inc()
            m.latency.labels(*labels).observe(time.perf_counter() - t0)

    @staticmethod
    def _json_by_default(scope):
        """A POST without a content type, or with curl's default form type, is read as the JSON it holds."""
        headers = scope.get("headers") or []
        ctype = next((v for k, v in headers if k == b"content-type"), None)
        if ctype is None or ctype.split(b";")[0].strip().lower() == b"application/x-www-form-urlencoded":
            headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", b"application/json")]
            scope = dict(scope, headers=headers)
        return scope

    def _authorized(self, scope) -> bool:
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                scheme, _, token = v.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    async def _reject(self, send) -> None:
        body = _error_body("Incorrect or missing API key: send 'Authorization: Bearer <key>' with the key the server "
                           "was started with (--api-key / GLOTPOOL_API_KEY)", "invalid_request_error", None,
                           "invalid_api_key")
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


__all__ = ["APIError", "Metrics", "MetricsAndAuth", "ServeSettings", "ServerState", "create_app"]
