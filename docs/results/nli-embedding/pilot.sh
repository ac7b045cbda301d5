cd "$(git rev-parse --show-toplevel)"
export GLOTPOOL_DATA=${GLOTPOOL_DATA:-/tmp/gp-data}
O=${OUT:-/tmp/nli-exp/pilot}
for try in 1 2; do
  /usr/bin/time -f "wall %e s" timeout 600 .venv/bin/python -m glotpool embed-train --backbone minilm --pooler glot --out $O/minilm-glot-s0 --cache-dir $O/cache-minilm --max-train 1000 --max-dev 300 --max-test 0 --seed 0 --epochs 4 --quiet --no-st && break
done
/usr/bin/time -f "wall %e s" timeout 600 .venv/bin/python -m glotpool embed-train --backbone minilm --pooler mean_linear --out $O/minilm-mean_linear-s0 --cache-dir $O/cache-minilm --max-train 1000 --max-dev 300 --max-test 0 --seed 0 --epochs 4 --quiet --no-st
for try in 1 2; do
  /usr/bin/time -f "wall %e s" timeout 600 .venv/bin/python -m glotpool evaluate --model $O/minilm-glot-s0 --model $O/minilm-mean_linear-s0 --n-retrieval 200 --n-graded 400 --n-probe 400 --cache-dir $O/eval-cache --out $O/eval-minilm --quiet && break
done
echo PILOT_DONE
