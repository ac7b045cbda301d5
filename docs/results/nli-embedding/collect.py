"""Copy one run.sh experiment's tables into this folder: the zero-shot table, a slim results.json (scores and
paired tests, no per-example arrays) and a cost table from the embed-train recipes.

    python docs/results/nli-embedding/collect.py OUT BACKBONE NAME [CACHE_SECONDS]

CACHE_SECONDS: the caching time when the recipes do not hold it (a rerun reads the cache in ~0 s).
"""
import json
import statistics
import sys
from pathlib import Path

out, bb, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
dest = Path(__file__).parent / name
dest.mkdir(exist_ok=True)
ev = json.loads((out / f"eval-{bb}" / "results.json").read_text())
for r in ev["results"]:
    r.pop("details", None)
(dest / "results.json").write_text(json.dumps(ev, indent=1) + "\n")
(dest / "results.md").write_text((out / f"eval-{bb}" / "results.md").read_text())
def grid_seconds(runs: Path) -> float:
    """Training seconds of every grid point of seed 0 (each point's own run record)."""
    return sum(json.loads(f.read_text())["record"]["train_seconds"] for f in runs.glob("*/seed-0/run.json"))


rows, recipes = [], {}
for f in sorted(out.glob(f"{bb}-*-s*/recipe.json")):
    r = json.loads(f.read_text())
    recipes[f.parent.name] = r
by = {}
for run, r in recipes.items():
    by.setdefault(r["pooler"], []).append(r)
lines = ["| pooler | trainable params | lr (dev-chosen) | dev MRR@10 per grid point (seed 0) | best epoch per seed | "
         "train s per run (mean of seeds) | grid s (seed 0, all points) |", "|---|---|---|---|---|---|---|"]
for pooler, rs in by.items():
    rs.sort(key=lambda r: r["seed"])
    first = rs[0]
    points = sorted(first["dev_grid"].items(), key=lambda kv: float(kv[0].split("-", 1)[1]))
    grid = ", ".join(f"{k.split('-', 1)[1]}: {100 * v:.1f}" for k, v in points)
    lines.append(f"| {pooler} | {first['trainable_parameters']:,} | {first['lr']:g} | {grid} | "
                 f"{', '.join(str(r['best_epoch']) for r in rs)} | "
                 f"{statistics.mean(r['train_seconds'] for r in rs):.0f} | "
                 f"{grid_seconds(Path(first['run_dir']).parent.parent):.0f} |")
cache = float(sys.argv[4]) if len(sys.argv) > 4 else max(r["cache_seconds"] for r in recipes.values())
text = (f"Caching the {bb} states of the 4,000 train + 1,000 dev triplets (14,355 texts): {cache:.0f} s, once for "
        "every pooler.\n\n" + "\n".join(lines) + "\n")
(dest / "costs.md").write_text(text)
(dest / "recipes.json").write_text(json.dumps(recipes, indent=1) + "\n")
print(text)
