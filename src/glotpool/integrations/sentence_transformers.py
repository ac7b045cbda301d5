"""sentence-transformers integration: any glotpool pooler as an ST module, export, pooler-only training.

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Transformer
    st = SentenceTransformer(modules=[Transformer(minilm_dir), GLOTPoolingModule(build_pooler("glot", in_dim=384))])
    st.encode(["a sentence"])                      # [1, pooler.out_dim]
    st.save("st-dir")
    st = load_sentence_transformer("st-dir")      # = SentenceTransformer("st-dir", trust_remote_code=True)

``trust_remote_code``: since sentence-transformers 6.0, a folder whose ``modules.json`` names a class outside the
``sentence_transformers.*`` namespace (here ``glotpool.integrations.sentence_transformers.GLOTPoolingModule``) only
loads with ``trust_remote_code=True``. No code is downloaded or copied into the folder: the class is imported from
the installed ``glotpool`` package, which must be installed wherever the folder is loaded.

Pooler-only training with the ST trainer (the transformer stays frozen, bit-identical)::

    freeze_transformer(st)                         # requires_grad False + eval mode (no dropout) for the backbone
    trainer = SentenceTransformerTrainer(model=st, args=..., train_dataset=pairs,
                                         loss=MultipleNegativesRankingLoss(st))
    trainer.train()                                # only GLOTPoolingModule's parameters change
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules import Module

from glotpool.io_utils import atomic_dir, atomic_write_json, refuse_foreign_dir
from glotpool.pooling import Pooler, load_pooler

MODULE_CONFIG = "glotpool_st.json"  # next to the pooler's config.json + model.safetensors
CLASS_REF = "glotpool.integrations.sentence_transformers.GLOTPoolingModule"


class GLOTPoolingModule(Module):
    """Wrap a glotpool :class:`~glotpool.pooling.Pooler` as a sentence-transformers module.

    ``forward(features)`` reads ``token_embeddings [B, L, D]`` (or ``all_layer_embeddings[layer]`` when ``layer``
    is set) and ``attention_mask [B, L]``, and writes ``sentence_embedding [B, pooler.out_dim]``. The pooler is
    mask-aware, so left- or right-padded batches and decoder last-token poolers work unchanged.

    Saved as the pooler's own files (``config.json`` + ``model.safetensors``, see ``Pooler.save_pretrained``) plus
    ``glotpool_st.json`` holding ``layer``.
    """

    config_keys = ["layer"]

    def __init__(self, pooler: Pooler, layer: int | None = None):
        super().__init__()
        if not isinstance(pooler, Pooler):
            raise ValueError(f"GLOTPoolingModule needs a glotpool Pooler (build_pooler / load_pooler), got "
                             f"{type(pooler).__name__}")
        if layer is not None and not isinstance(layer, int):
            raise ValueError(f"layer must be None (the transformer's last layer) or an int hidden_states index, "
                             f"got {layer!r}")
        self.pooler = pooler
        self.layer = layer

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        if "cu_seq_lens_q" in features:  # flash-attention unpadding: states arrive as one flat [1, sum L, D] row
            raise ValueError("GLOTPoolingModule needs padded token states; load the Transformer module with "
                             "unpad_inputs=False")
        if self.layer is None:
            h = features["token_embeddings"]
        else:
            if "all_layer_embeddings" not in features:
                raise ValueError(f"layer={self.layer} needs all hidden states: build the Transformer module with "
                                 "config_kwargs={'output_hidden_states': True}")
            h = features["all_layer_embeddings"][self.layer]
        mask = features.get("attention_mask")
        if mask is not None and mask.shape[-1] != h.shape[1]:
            mask = None  # not a per-token mask of these states (e.g. image patches): every position is real
        features["sentence_embedding"] = self.pooler(h, mask)
        return features

    def get_embedding_dimension(self) -> int:
        return self.pooler.out_dim

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        # Weights are always safetensors (Pooler.save_pretrained), whatever safe_serialization says.
        self.pooler.save_pretrained(output_path)
        atomic_write_json(Path(output_path) / MODULE_CONFIG, self.get_config_dict())

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs) -> "GLOTPoolingModule":
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                   revision=revision, local_files_only=local_files_only)
        if folder is None:
            raise FileNotFoundError(f"no GLOTPoolingModule folder {subfolder!r} in {model_name_or_path}")
        folder = Path(folder)
        cfg_file = folder / MODULE_CONFIG
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        return cls(load_pooler(folder), layer=cfg.get("layer"))

    def __repr__(self) -> str:
        return f"GLOTPoolingModule(pooler={self.pooler.name!r}, out_dim={self.pooler.out_dim}, layer={self.layer})"


# ----------------------------------------------------------------------------------------------------------------
# building, exporting, loading


def build_sentence_transformer(backbone, pooler: Pooler, *, normalize: bool = False, device: str | None = None):
    """A ``SentenceTransformer`` = ST ``Transformer`` over the backbone's model folder + :class:`GLOTPoolingModule`.

    ``backbone`` is a loaded :class:`glotpool.states.backbone.Backbone`; the Transformer re-reads the same folder (same
    truncation ``max_length``, dtype, pad token, padding side) so its token states equal ``backbone.encode``'s.
    A non-final ``layer`` is read from ``all_layer_embeddings`` (the Transformer then returns every hidden state).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer

    if pooler.in_dim != backbone.dim:
        raise ValueError(f"pooler in_dim={pooler.in_dim} does not match the backbone's hidden size {backbone.dim}")
    path = backbone.source.get("path") or backbone.config.name_or_path
    tok = backbone.tokenizer
    if tok.padding_side == "left" and "position_ids" in backbone._forward_args:
        # Backbone passes real-token position_ids for left padding; ST's Transformer does not.
        raise ValueError("exporting a left-padded decoder backbone is not supported (sentence-transformers passes "
                         "no position_ids); load the backbone with padding_side='right' - the pooler is "
                         "mask-aware, so right padding gives the same vectors")
    if backbone.prompt is not None:
        # ST's Transformer tokenizes the raw text: the prompt (and the text mask the pooler was trained on) would be
        # silently dropped, and every vector would differ from `glotpool encode`'s.
        raise ValueError(f"exporting a backbone with a prompt ({backbone.prompt!r}) to sentence-transformers is not "
                         f"supported (the exported model would embed the raw text without it); serve the glotpool "
                         f"Encoder instead (`glotpool serve`), or train without --prompt")
    layer = backbone._layer_index
    layer = None if layer == -1 else layer
    config_kwargs = {"output_hidden_states": True} if layer is not None else None
    # Plain "text" modality pinned: ST >= 6 would otherwise wrap every text of a model with a chat template
    # (SmolLM2) in that template, which changes the tokens (and states) the pooler was trained on.
    transformer = Transformer(path, max_seq_length=backbone.config.max_length,
                              model_kwargs={"dtype": backbone.config.dtype}, config_kwargs=config_kwargs,
                              modality_config={"text": {"method": "forward",
                                                        "method_output_name": "last_hidden_state"}},
                              module_output_name="token_embeddings", unpad_inputs=False)
    st_tok = transformer.tokenizer
    st_tok.padding_side = tok.padding_side
    if st_tok.pad_token is None:  # Backbone pads decoders without a pad token with eos
        st_tok.pad_token = tok.pad_token
    modules = [transformer, GLOTPoolingModule(pooler.cpu(), layer=layer)]
    if normalize:
        from sentence_transformers.base.modules import Normalize
        modules.append(Normalize())
    device = device or str(backbone.device)
    return SentenceTransformer(modules=modules, device=device)


def export_sentence_transformer(backbone, pooler: Pooler, out_dir: str | os.PathLike, *,
                                normalize: bool = False, overwrite: bool = False, card_meta: dict | None = None,
                                model_id: str | None = None) -> Path:
    """Write a sentence-transformers folder (backbone weights + tokenizer + pooler) to ``out_dir``, atomically.

    Load it with :func:`load_sentence_transformer` (or ``SentenceTransformer(out_dir, trust_remote_code=True)``).
    The folder gets a README.md model card (``card_meta``: the encoder's encoder.json content, for the training
    sections and numbers; ``model_id``: what its snippet loads, default ``out_dir``), and ST's ``model_card_data``
    (model_name, base_model) is set so MTEB files results under a real model name.
    """
    out_dir = Path(out_dir)
    refuse_foreign_dir(out_dir, "glotpool_export.json", overwrite, "glotpool sentence-transformers export")
    st = build_sentence_transformer(backbone, pooler, normalize=normalize, device="cpu")
    from glotpool import __version__
    from glotpool.encoder import Encoder
    from glotpool.io_utils import atomic_write_text
    from glotpool.model_card import base_model_of, st_card

    card_meta = dict(card_meta or {"pooler": pooler.name, "dim": pooler.out_dim, "glotpool_version": __version__,
                                   "backbone": Encoder(backbone, pooler).backbone_reference()})
    model_id = model_id or str(out_dir)
    model_name, base_model = model_id.rstrip("/").split("/")[-1], base_model_of(card_meta.get("backbone") or {})
    st.model_card_data.model_name = model_name
    st.model_card_data.base_model = base_model
    with atomic_dir(out_dir, "glotpool_export.json", overwrite, "glotpool sentence-transformers export") as tmp:
        st.save(str(tmp))
        atomic_write_json(tmp / "glotpool_export.json", {
            "backbone": backbone.config.name_or_path, "pooler": pooler.name, "layer": backbone.config.layer,
            "normalize": normalize, "load": f"SentenceTransformer({str(out_dir)!r}, trust_remote_code=True)",
            "model_name": model_name, "base_model": base_model})
        export = json.loads((tmp / "glotpool_export.json").read_text())
        atomic_write_text(tmp / "README.md", st_card(card_meta, export, model_id=model_id))
    return out_dir


def load_sentence_transformer(path: str | os.PathLike, device: str | None = None, **kwargs):
    """``SentenceTransformer(path, trust_remote_code=True)``: the flag only lets ST import the installed
    ``glotpool`` class named in ``modules.json`` (nothing is downloaded)."""
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} is not a sentence-transformers folder (no modules.json); create one with "
                                "`glotpool export-st --model ENCODER_DIR --out DIR`")
    kwargs.setdefault("trust_remote_code", True)
    model = SentenceTransformer(str(path), device=device, **kwargs)
    try:  # ST keeps model_card_data in memory only: restore the names the export recorded (MTEB reads them)
        export = json.loads((path / "glotpool_export.json").read_text())
    except (OSError, ValueError):
        export = {}
    if export.get("model_name"):
        model.model_card_data.model_name = export["model_name"]
    if export.get("base_model"):
        model.model_card_data.base_model = export["base_model"]
    return model


# ----------------------------------------------------------------------------------------------------------------
# pooler-only training


def _keep_eval(module: torch.nn.Module, args) -> None:
    module.eval()  # the Trainer calls model.train() every step; a frozen backbone must not run dropout


def freeze_transformer(model, eval_mode: bool = True) -> int:
    """Freeze every module of a SentenceTransformer except its :class:`GLOTPoolingModule`; return the number of
    trainable parameters left (the pooler's).

    ``eval_mode=True`` also keeps frozen modules in eval mode during training (no dropout), so the pooler trains on
    exactly the token states it sees at inference - the same states a glotpool cache stores.
    """
    poolers = [m for m in model if isinstance(m, GLOTPoolingModule)]
    if not poolers:
        raise ValueError("the model has no GLOTPoolingModule to train; build it with build_sentence_transformer "
                         "or add GLOTPoolingModule(pooler) to its modules")
    for m in model:
        if isinstance(m, GLOTPoolingModule):
            m.requires_grad_(True)
            continue
        m.requires_grad_(False)
        if eval_mode and not getattr(m, "_glotpool_eval_hook", False):
            m.register_forward_pre_hook(_keep_eval)
            m._glotpool_eval_hook = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_pooler_st(model, train_dataset, *, loss: str = "mnrl", output_dir: str | os.PathLike,
                    epochs: float = 1.0, max_steps: int = -1, batch_size: int = 16, lr: float = 1e-3,
                    seed: int = 0, show_progress: bool = False):
    """Train only the pooler of ``model`` with ``SentenceTransformerTrainer``; returns the trainer.

    ``loss="mnrl"``: ``MultipleNegativesRankingLoss`` on (anchor, positive) columns - in-batch InfoNCE, the
    paper's recipe for retrieval/MTEB. ``loss="cosent"``: ``CoSENTLoss`` on (sentence1, sentence2, score) columns.
    """
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MultipleNegativesRankingLoss

    losses = {"mnrl": MultipleNegativesRankingLoss, "cosent": CoSENTLoss}
    if loss not in losses:
        raise ValueError(f"unknown loss {loss!r}; use one of {sorted(losses)}")
    freeze_transformer(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, max_steps=max_steps,
        per_device_train_batch_size=batch_size, learning_rate=lr, seed=seed, save_strategy="no", report_to="none", logging_strategy="no",
        disable_tqdm=not show_progress, use_cpu=str(model.device) == "cpu", dataloader_drop_last=loss == "mnrl")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset,
                                         loss=losses[loss](model))
    trainer.train()
    return trainer


__all__ = ["GLOTPoolingModule", "build_sentence_transformer", "export_sentence_transformer",
           "load_sentence_transformer", "freeze_transformer", "train_pooler_st", "CLASS_REF"]
