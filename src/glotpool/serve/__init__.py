"""``glotpool serve``: an OpenAI-compatible embedding / classification / similarity server for trained poolers.

    app.py       FastAPI app: routes, OpenAI-style errors, API key, Prometheus metrics
    batching.py  the dynamic batcher: queue -> one inference worker thread per model, token budget, length sort
    registry.py  NAME=PATH specs -> loaded Encoders (Encoder folders or BACKBONE:POOLER), backbones shared

Start it with ``glotpool serve --model NAME=PATH``; in Python: ``create_app(ServeSettings(models=[...]))`` is an ASGI
app for any ASGI server. Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client).
"""
from glotpool.serve.app import ServeSettings, create_app
from glotpool.serve.batching import Batcher, QueueFull, ShuttingDown
from glotpool.serve.registry import ModelRegistry, ModelSpec, parse_model_spec

__all__ = ["Batcher", "ModelRegistry", "ModelSpec", "QueueFull", "ServeSettings", "ShuttingDown", "create_app",
           "parse_model_spec"]
