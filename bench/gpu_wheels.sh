#!/usr/bin/env bash
# Fill ./.whl/ with the wheels bench/gpu_checks.sh needs on the GPU machine, which has
# python 3.12, torch and triton but no network: sparsify's SparseCoder (bench/sae_step.py)
# and what its modules import. Run here (PyPI reachable), then carry .whl to the machine
# (`run` with carry [".whl"]); gpu_checks.sh installs them with --no-deps into /tmp/site,
# behind the machine's own packages. One requirement per line: add lines, keep them sorted
# by purpose. Pinned to the versions this project tests against. The list was checked by
# importing sparsify.sparse_coder with only torch, triton, torch's own dependencies and
# these on the path (a torch-only image may lack numpy: it is here, behind the image's own).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUIREMENTS=(
    # sparsify: its sparse coder and what sparse_coder.py / utils.py import
    "eai-sparsify==1.3.3"
    "einops==0.8.2"
    "natsort==8.4.0"
    "simple-parsing==0.1.9"
    "docstring-parser==0.18.0"
    "safetensors==0.8.0"
    "accelerate==1.15.0"
    "psutil==7.2.2"
    "transformers==5.24.0"
    "tokenizers==0.23.3"
    "regex==2026.11.19"
    "huggingface-hub==2.4.0"
    "hf-xet==1.8.0"
    "pyyaml==6.0.4"
    "tqdm==4.70.1"
    "packaging==26.4"
    "httpx2==2.16.2"
    "httpcore2==2.16.2"
    "h11==0.16.0"
    "idna==3.20"
    "truststore==0.10.5"
    "numpy==2.4.6"
)
mkdir -p .whl
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python  # this checkout's pip
"$PY" -m pip download --quiet --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --no-deps -d .whl \
    "${REQUIREMENTS[@]}"
ls -l .whl
du -sh .whl
