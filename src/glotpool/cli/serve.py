"""``glotpool serve``: serve trained poolers (and plain backbone + built-in pooler) over HTTP.

OpenAI-compatible ``/v1/embeddings`` (the official ``openai`` client works as-is), ``/v1/classify``,
``/v1/similarity``, ``/v1/models``, ``/health`` and Prometheus ``/metrics``, with dynamic batching (see
:mod:`glotpool.serve.batching`). SIGTERM / Ctrl-C stops accepting, finishes every accepted request, then exits 0.
"""
from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="HTTP server: OpenAI-compatible embeddings, classify, similarity (dynamic batching)",
        description="Serve one or more models over HTTP. --model NAME=PATH, where PATH is an encoder folder "
                    "(glotpool train --out X writes X/model) or BACKBONE:POOLER with a parameter-free pooler "
                    "(e.g. minilm:mean). Models naming the same backbone share one copy of it. Concurrent requests "
                    "are grouped into backbone batches by a token budget, per model, in one inference thread.")
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a model to serve (repeat for several): NAME=ENCODER_FOLDER or NAME=BACKBONE:POOLER")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $GLOTPOOL_API_KEY; unset = open)")
    p.add_argument("--max-batch-tokens", type=int, default=4096,
                   help="padded tokens per backbone batch, rows x longest (sized for a CPU)")
    p.add_argument("--max-batch-requests", type=int, default=128,
                   help="requests sharing one batch (1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long an idle worker waits for more requests before running a batch")
    p.add_argument("--batch-overhead-tokens", type=int, default=None,
                   help="a batch's fixed cost in padded tokens: the batcher picks the length-sorted batch with the "
                        "lowest cost per real token (default: 256 on a CPU, 8192 on a GPU: fill the budget)")
    p.add_argument("--max-queue", type=int, default=512,
                   help="unfinished requests per model; more get 429 with Retry-After")
    p.add_argument("--max-inputs", type=int, default=512, help="texts per request; more get 413")
    p.add_argument("--auto-truncate", action="store_true",
                   help="truncate texts over the model's max_length tokens instead of answering 413")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="return raw pooled vectors from /v1/embeddings (default: unit length, as OpenAI's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="run the backbone under autocast in this dtype, as glotpool encode --dtype: auto = bfloat16 "
                        "on GPUs and on CPUs with AVX512-BF16/AMX, else the backbone's own dtype")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-backbone-check", action="store_true",
                   help="serve an encoder on a backbone that differs from the one it was trained on (at your risk)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to wait for in-flight requests before cancelling them")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs throughput)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    try:
        import uvicorn

        from glotpool.serve import ServeSettings, create_app
        from glotpool.serve.registry import parse_model_spec
    except ImportError as e:
        raise ModuleNotFoundError(f"glotpool serve needs the serve extra: pip install 'glotpool[serve]' ({e})") from e
    import torch

    for spec in args.model:  # fail on a bad spec before binding the port
        parse_model_spec(spec)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServeSettings(
        models=list(args.model), normalize=args.normalize,
        api_key=args.api_key or os.environ.get("GLOTPOOL_API_KEY") or None,
        max_batch_tokens=args.max_batch_tokens, max_batch_requests=args.max_batch_requests,
        max_wait_ms=args.max_wait_ms, batch_overhead_tokens=args.batch_overhead_tokens, max_queue=args.max_queue,
        max_inputs=args.max_inputs,
        auto_truncate=args.auto_truncate, device=args.device, dtype=args.dtype,
        check_backbone=not args.no_backbone_check, drain_timeout_s=args.graceful_timeout)
    if min(settings.max_batch_tokens, settings.max_batch_requests, settings.max_queue, settings.max_inputs) < 1:
        raise ValueError("--max-batch-tokens, --max-batch-requests, --max-queue and --max-inputs must be >= 1")
    app = create_app(settings)
    state = app.fastapi.state.glot

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state.begin_drain()           # /health -> 503 at once, while in-flight requests finish
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a graceful drain exits 0 instead of re-raising the signal

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                   timeout_graceful_shutdown=args.graceful_timeout, lifespan="on",
                                   access_log=args.access_log))
    failed = []

    def on_fatal(e):
        failed.append(e)
        server.should_exit = True

    state.on_fatal = on_fatal
    server.run()
    rc = 0
    if failed:
        print(f"glotpool serve: error: could not load the models: {failed[0]}", file=sys.stderr)
        rc = 2
    # Every accepted request has been answered and the workers have stopped: skip the interpreter's teardown of
    # torch + transformers (2-6 s of module finalization on a small CPU), so a stopped pod exits at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
