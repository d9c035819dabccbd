#!/usr/bin/env bash
# Every GPU check in one call, for a lent GPU machine (torch + triton, no Ray/zarr/DB),
# the step's numbers first (if the machine's time runs out, they are what matters most):
#   1. bench/sae_step.py: the training step (saefeat eager, with bf16 Adam state, in a
#      CUDA graph) against sparsify, dense torch and the floor;
#   2. the same script's --profile: the top kernels of the eager and the graph step at
#      768 x 24576 x 32 @ 4096 (launches vs cast/transpose vs sort);
#   3. the kernel tests compiled for the GPU (SAEFEAT_TEST_DEVICE=cuda);
#   4. the indexing ratio (encode + top-k bookkeeping vs encode alone) on the GPU;
#   5. one harvest worker (bench/harvest_worker.py: ShardHarvester + Zarr against the
#      truncated forward and the naive output_hidden_states harvest), no Ray.
# sparsify and its small pure-Python needs travel as wheels in .whl/ (bench/gpu_wheels.sh
# fills it; carry ".whl"). Each part's time limit is an env var (seconds; the defaults add
# up to 9 minutes, inside one 600 s device call). Logs go to $OUT (or ./gpu-out); the short table is printed last.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Only the wheels whose package the machine lacks: PYTHONPATH comes before site-packages,
# so a carried copy of a package it has would replace the image's own.
missing=$(python3 - <<'PY'
import glob, importlib.metadata as md
for wheel in sorted(glob.glob(".whl/*.whl")):
    try:
        md.distribution(wheel.split("/")[-1].split("-")[0])
    except md.PackageNotFoundError:
        print(wheel)
PY
)
if [ -n "$missing" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site $missing && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/gpu.txt"

timeout "${SAE_STEP_S:-200}" python3 bench/sae_step.py 2>&1 | tee "$OUT/sae_step.log"

timeout "${PROFILE_S:-50}" python3 bench/sae_step.py --profile --sizes 0 \
    --variants saefeat,saefeat+graph 2>&1 | tee "$OUT/profile.log"

SAEFEAT_TEST_DEVICE=cuda timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider \
    -n 16 tests/kernels 2>&1 | tee "$OUT/kernel_tests.log" | tail -25

for size in "576 4608" "768 24576"; do
    set -- $size
    timeout "${INDEX_S:-40}" python3 -c "
import json, sys
sys.path.insert(0, 'bench')
from catalog import index_ratio
print(json.dumps(index_ratio(64, d_in=$1, d_sae=$2, device='cuda')))" 2>&1 | tee -a "$OUT/index.log"
done

# The set on this machine's disk (the real path, fsync included), then on /dev/shm when
# it has room (the same without the disk). Each run's last line is its JSON.
# HARVEST_SHM=1 adds the /dev/shm run (the defaults fit one 600 s call without it).
timeout "${HARVEST_S:-90}" python3 bench/harvest_worker.py --device cuda 2>&1 \
    | tee "$OUT/harvest.log" | tail -10
if [ "${HARVEST_SHM:-0}" = 1 ] && [ "$(df -BG --output=avail /dev/shm | tail -1 | tr -dc 0-9)" -ge 8 ]; then
    timeout "${HARVEST_S:-90}" python3 bench/harvest_worker.py --device cuda --root /dev/shm \
        2>&1 | tee -a "$OUT/harvest.log" | tail -10
fi

echo "== summary =="
grep -E "^# SAE|x[0-9]+@" "$OUT/sae_step.log" | grep -v "^{" | tail -40
grep -E "^## " "$OUT/profile.log"
tail -1 "$OUT/kernel_tests.log"
cat "$OUT/index.log" | grep '^{'
grep '^{"harvest_c_over_a' "$OUT/harvest.log" | cut -c1-420
