"""Model cards: the ``README.md`` of every saved model folder (Hub YAML metadata + what / how trained / results / usage).

    encoder_card(meta, model_id="org/name")      # meta = encoder.json's content (Encoder.save_pretrained writes it)
    st_card(meta, export, model_id="org/name-st") # the sentence-transformers export's card

The YAML header is built with ``huggingface_hub.ModelCardData`` (``library_name: glotpool``, ``base_model``,
``pipeline_tag``, ``tags``, ``datasets``, ``metrics`` + a ``model-index`` with the run's dev / test numbers), so the
Hub renders it and indexes the results. ``meta["training"]`` is what :meth:`Encoder.from_run` gathers from the run
(pooler spec, seed, train config, best epoch, dev / test metrics) plus what ``glotpool train`` adds (task, split
sizes, datasets); a model without it still gets a card, without the training sections.
"""
from __future__ import annotations

import json
import math

_PIPELINE = {"single": "text-classification", "pair": "text-classification", "sts": "sentence-similarity",
             "retrieval": "sentence-similarity", None: "feature-extraction"}
_TASK_NAMES = {"single": "Text Classification", "pair": "Text Classification", "sts": "Semantic Similarity",
               "retrieval": "Retrieval"}
# preset tasks whose data lives on the Hub under another id than the preset's name
DATASET_IDS = {"snli": "stanfordnlp/snli"}


def dataset_ids(task_name: str) -> list[str]:
    """The Hub dataset ids of a task (a preset's ``hf_path``, a known offline corpus, else the task's name)."""
    from glotpool.data.presets import PRESETS

    preset = PRESETS.get(task_name)
    return [DATASET_IDS.get(task_name) or (preset.hf_path if preset is not None and preset.hf_path else task_name)]


def base_model_of(backbone_ref: dict) -> str | None:
    """The Hub id of the backbone (``base_model``), when it has one."""
    return backbone_ref.get("hub_id") or None


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _yaml(meta: dict, model_name: str, tags: list[str], library: str = "glotpool",
          pipeline: str | None = None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    tr = meta.get("training") or {}
    bb = meta.get("backbone") or {}
    task_type = meta.get("task_type")
    datasets = list(tr.get("datasets") or ([tr["task"]] if tr.get("task") else []))
    results = []
    for split in ("dev", "test"):
        for metric, value in (tr.get(split) or {}).items():
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                results.append(EvalResult(task_type=_PIPELINE.get(task_type, "feature-extraction"),
                                          task_name=_TASK_NAMES.get(task_type), dataset_type=datasets[0]
                                          if datasets else "custom", dataset_name=tr.get("task") or "custom",
                                          dataset_split="validation" if split == "dev" else "test",
                                          metric_type=metric, metric_name=f"{split} {metric}",
                                          metric_value=round(float(value), 6)))
    data = ModelCardData(library_name=library, base_model=base_model_of(bb), tags=tags,
                         pipeline_tag=pipeline or _PIPELINE.get(task_type, "feature-extraction"),
                         datasets=datasets or None,
                         metrics=sorted({r.metric_type for r in results}) or None,
                         model_name=model_name, eval_results=results or None)
    return data.to_yaml()


def _what(meta: dict) -> str:
    bb = meta.get("backbone") or {}
    base = base_model_of(bb) or bb.get("name_or_path")
    head = meta.get("task_type")
    labels = meta.get("label_names")
    text = (f"A glotpool model: the frozen language model `{base}` "
            f"(layer {bb.get('layer')}, up to {bb.get('max_length')} tokens, {bb.get('dtype')}) and a trained "
            f"`{meta.get('pooler')}` pooler on its token states, giving {meta.get('dim')}-dimensional sentence "
            f"vectors. Only the pooler{' and the task head' if head else ''} were trained; the backbone is frozen.")
    if meta.get("pooler") == "glot":
        text += (" GLOT pooling builds a graph over a sentence's tokens (edges between similar token states), runs "
                 "a small GNN over it and reads the sentence vector out with attention.")
    if head:
        text += f"\n\nTask head: `{head}`" + (f" with labels {', '.join(map(str, labels))}." if labels else ".")
    return text


def _training(meta: dict) -> str:
    tr = meta.get("training") or {}
    if not tr:
        return ""
    bb = meta.get("backbone") or {}
    cfg = tr.get("train_config") or {}
    rows = [("pooler spec", f"`{tr.get('pooler_spec') or meta.get('pooler')}`"),
            ("task", f"{tr.get('task', 'n/a')} ({meta.get('task_type')})")]
    if tr.get("splits"):
        rows.append(("splits", ", ".join(f"{k} {v:,}" for k, v in tr["splits"].items())))
    budget = [f"{cfg['epochs']} epochs max" if "epochs" in cfg else None,
              f"best epoch {tr['best_epoch']}" if tr.get("best_epoch") is not None else None,
              f"batch size {cfg['batch_size']}" if "batch_size" in cfg else None,
              f"lr {cfg['lr']}" if "lr" in cfg else None,
              f"early-stopping patience {cfg['patience']}" if "patience" in cfg else None,
              f"{tr['train_seconds']:.0f} s of training" if isinstance(tr.get("train_seconds"), (int, float))
              else None]
    rows.append(("budget", ", ".join(b for b in budget if b) or "n/a"))
    if tr.get("trainable_parameters") is not None:
        rows.append(("trainable parameters", f"{tr['trainable_parameters']:,}"))
    rows += [("seed", str(tr.get("seed", "n/a"))), ("model selection", f"best dev {tr.get('metric', 'n/a')}"),
             ("backbone", f"`{base_model_of(bb) or bb.get('name_or_path')}`"
                          + (f" @ `{bb['hub_revision']}`" if bb.get("hub_revision") else "")
                          + (f", weights sha256 `{bb['weights_sha256'][:16]}...`" if bb.get("weights_sha256") else ""))]
    out = "## Training\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    res = [(split, m, v) for split in ("dev", "test") for m, v in (tr.get(split) or {}).items()]
    if res:
        out += "\n## Results\n\n| split | metric | value |\n|---|---|---|\n" + "".join(
            f"| {s} | {m} | {_fmt(v)} |\n" for s, m, v in res)
    return out


def encoder_card(meta: dict, model_id: str) -> str:
    """The README.md of an Encoder folder. ``model_id``: what the usage snippet loads (repo id or folder)."""
    name = model_id.rstrip("/").split("/")[-1] or "glotpool-model"
    task_type = meta.get("task_type")
    py = [f"from glotpool.encoder import Encoder", "",
          f"encoder = Encoder.from_pretrained({model_id!r})",
          'vectors = encoder.encode(["a fine film .", "dull and long ."])  # numpy [2, '
          f'{meta.get("dim")}]', "print(vectors.shape)"]
    cli = ["pip install glotpool", "printf 'text\\na fine film .\\ndull and long .\\n' > texts.csv",
           f"glotpool encode --model {model_id} --input texts.csv --out vectors.npy"]
    if task_type in ("single",):
        py.append('print(encoder.predict(["a fine film .", "dull and long ."]))')
        cli.append(f"glotpool predict --model {model_id} --input texts.csv --out predictions.csv")
    elif task_type in ("sts", "retrieval", "pair"):
        py.append('print(encoder.similarity(["a fine film ."], ["a good movie ."]))')
    tags = ["glotpool", "sentence-embeddings", "feature-extraction", f"pooler-{meta.get('pooler')}"]
    if task_type:
        tags.append(f"task-{task_type}")
    return ("---\n" + _yaml(meta, name, tags) + "\n---\n\n" + f"# {name}\n\n" + _what(meta) + "\n\n" +
            _training(meta) + "\n## Usage\n\nPython (`pip install glotpool`):\n\n```python\n" + "\n".join(py) +
            "\n```\n\nCommand line:\n\n```bash\n" + "\n".join(cli) + "\n```\n\n"
            f"Loading checks that the backbone found (by preset, folder or Hub id "
            f"`{base_model_of(meta.get('backbone') or {})}`) is the one the pooler was trained on (weights sha256, "
            f"layer, max_length, dtype, tokenizer) and refuses another.\n\n"
            f"<sub>Written by glotpool {meta.get('glotpool_version')}; `encoder.json` holds the full backbone "
            f"reference.</sub>\n")


def st_card(meta: dict, export: dict, model_id: str) -> str:
    """The README.md of a sentence-transformers export. ``meta``: the encoder's encoder.json content (or a
    minimal ``{"backbone", "pooler", "dim"}``); ``export``: what glotpool_export.json records."""
    name = model_id.rstrip("/").split("/")[-1] or "glotpool-st"
    py = ['# pip install "glotpool[st]"', "from sentence_transformers import SentenceTransformer", "",
          f"model = SentenceTransformer({model_id!r}, trust_remote_code=True)",
          'vectors = model.encode(["a fine film .", "dull and long ."])',
          "print(vectors.shape)"]
    tags = ["glotpool", "sentence-transformers", "sentence-similarity", "feature-extraction",
            f"pooler-{meta.get('pooler')}"]
    return ("---\n" + _yaml(meta, name, tags, library="sentence-transformers", pipeline="sentence-similarity") +
            "\n---\n\n" + f"# {name}\n\n" + _what(meta) + "\n\nThis folder is a sentence-transformers model: the "
            "backbone as an ST `Transformer` module and the trained pooler as glotpool's `GLOTPoolingModule`"
            + (" followed by `Normalize`" if export.get("normalize") else "") + ". It needs "
            '`pip install "glotpool[st]"` (the pooler class lives in glotpool) and `trust_remote_code=True`, which '
            "lets sentence-transformers import that installed class; nothing is downloaded.\n\n" + _training(meta) +
            "\n## Usage\n\n```python\n" + "\n".join(py) + "\n```\n\nMTEB:\n\n```python\nimport mteb\n\n"
            f"model = mteb.get_model({model_id!r})  # with glotpool[mteb] installed\n```\n\n"
            f"<sub>Written by glotpool {meta.get('glotpool_version')}; {json.dumps(export.get('pooler'))} pooler, "
            f"layer {export.get('layer')}.</sub>\n")


def read_card_metadata(readme_text: str) -> dict:
    """The YAML header of a card as a dict (huggingface_hub's parser)."""
    from huggingface_hub import ModelCard

    return ModelCard(readme_text).data.to_dict()


__all__ = ["encoder_card", "st_card", "read_card_metadata", "base_model_of"]
