"""``glotpool export-st``: a saved Encoder (backbone + trained pooler) -> a sentence-transformers folder."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-st", help="export an encoder (backbone + pooler) as a sentence-transformers model folder",
        description="Write a sentence-transformers folder: the backbone (ST Transformer module) + the trained "
                    "pooler (glotpool's GLOTPoolingModule). Load it with SentenceTransformer(OUT, "
                    "trust_remote_code=True): the flag lets ST import the installed glotpool class; nothing is "
                    "downloaded.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="encoder folder (Encoder.save_pretrained / `glotpool` training output)")
    src.add_argument("--pooler", help="a pooler folder (Pooler.save_pretrained, e.g. RUN/best/pooler) to "
                                      "combine with --backbone")
    p.add_argument("--backbone", default="minilm", help="backbone for --pooler (default minilm)")
    p.add_argument("--layer", type=int, default=-1, help="backbone layer for --pooler (default -1 = last)")
    p.add_argument("--max-length", type=int, default=256, help="truncation for --pooler (default 256)")
    p.add_argument("--out", required=True, help="output folder (replaced atomically; a non-empty folder that is "
                                                "not an earlier export is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that is not an export")
    p.add_argument("--normalize", action="store_true", help="append a Normalize module (unit-length vectors)")
    p.add_argument("--model-id", default=None,
                   help="the Hub repo id you will publish OUT as: the model card's usage snippet and the name MTEB "
                        "files results under (default: OUT's folder name, the snippet loads OUT)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.io_utils import refuse_foreign_dir

    # before any model loads: never replace a user's folder
    refuse_foreign_dir(args.out, "glotpool_export.json", args.overwrite, "glotpool sentence-transformers export")
    from glotpool.integrations.sentence_transformers import export_sentence_transformer

    if args.model is not None:
        from glotpool.encoder import Encoder

        enc = Encoder.from_pretrained(args.model, device=args.device)
        backbone, pooler = enc.backbone, enc.pooler
        from glotpool.hub import resolve_folder

        card_meta = json.loads((resolve_folder(args.model) / "encoder.json").read_text())  # training + numbers
    else:
        from glotpool.states.backbone import load_backbone
        from glotpool.pooling import load_pooler

        backbone = load_backbone(args.backbone, layer=args.layer, max_length=args.max_length, device=args.device)
        pooler = load_pooler(args.pooler)
        card_meta = None
    out = export_sentence_transformer(backbone, pooler, args.out, normalize=args.normalize,
                                      overwrite=args.overwrite, card_meta=card_meta, model_id=args.model_id)
    print(f"wrote {out} (pooler {pooler.name!r}, dim {pooler.out_dim}); load it with "
          f"SentenceTransformer({str(out)!r}, trust_remote_code=True)", file=sys.stderr)
    return 0
