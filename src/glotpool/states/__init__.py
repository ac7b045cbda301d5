"""States layer: frozen backbones and the resumable token-state cache (one process or sharded over ranks).

    backbone.py   presets, loading (hub id, folder, GGUF), tokenisation (+ prompts, text mask), the frozen forward
                  (one layer, or several from one pass)
    prompts.py    prompt templates (PromptEOL, echo, your own with {text}): filling and the pooled text's span
    selection.py  which layers and tokens a pooler sees: one definition for the cache and the encoder
    cache.py      ragged fp16 safetensors cache: build / open / verify, distributed sharding and merge
"""
