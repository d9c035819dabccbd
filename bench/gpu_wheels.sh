#!/usr/bin/env bash
# Fill ./.whl/ with the wheels bench/gpu_checks.sh needs on the GPU machine, which has
# Python 3.12 with torch, triton, transformers and their own needs (numpy, tokenizers,
# huggingface-hub, ...) but no network and no Ray, zarr or pydantic. Run here (PyPI
# reachable), then carry .whl to the machine (`run` with carry [".whl"]); gpu_checks.sh
# installs only those the machine lacks, with --no-deps into /tmp/site. One pinned
# requirement per line, grouped by what needs it. WHL_PY / WHL_DIR make the same set for
# another Python (a closure check on this machine). manylinux_2_28 is allowed beside 2014:
# torch's own wheels already need glibc 2.28.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${WHL_DIR:-.whl}
mkdir -p "$dir"
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python  # this checkout's pip
"$PY" -m pip download -q --only-binary=:all: --no-deps --implementation cp \
    --python-version "${WHL_PY:-3.12}" --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$dir" -r /dev/stdin <<'REQS'
# bench/sae_step.py's baseline: sparsify's SparseCoder and what sparse_coder.py / utils.py
# import beyond transformers
eai-sparsify==1.3.3
einops==0.8.2
natsort==8.4.0
simple-parsing==0.1.9
docstring-parser==0.18.0
safetensors==0.8.0
accelerate==1.15.0
psutil==7.2.2
# the per-worker harvest (bench/harvest_worker.py): storage/activations.py needs zarr,
# saefeat/specs.py (HarvestSpec) needs pydantic
zarr==3.1.6
numcodecs==0.16.6
google-crc32c==1.9.0
donfig==0.8.1.post1
pydantic==2.14.4
pydantic-core==2.50.5
annotated-types==0.8.0
typing-inspection==0.4.5
typing-extensions==4.16.0
REQS
ls -l "$dir"/*.whl
du -ch "$dir"/*.whl | tail -1
