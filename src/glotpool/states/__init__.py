"""States layer: frozen backbones and the resumable token-state cache (one process or sharded over ranks).

    backbone.py   presets, loading (hub id, folder, GGUF), tokenisation, the frozen forward
    cache.py      ragged fp16 safetensors cache: build / open / verify, distributed sharding and merge
"""
