#!/usr/bin/env bash
# Fill ./.whl/ with the wheels the GPU machine lacks (it has Python 3.12 with torch, triton,
# transformers and their own needs such as numpy and PyYAML, and no network);
# bench/gpu_checks.sh installs them there with --no-index --target. One requirement a line.
# WHL_PY / WHL_DIR make the same set for another Python (a closure check on this machine).
# manylinux_2_28 is allowed beside 2014: torch's own wheels already need glibc 2.28.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${WHL_DIR:-.whl}
mkdir -p "$dir"
${PIP:-python3 -m pip} download -q --only-binary=:all: --no-deps --implementation cp \
    --python-version "${WHL_PY:-3.12}" --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$dir" -r /dev/stdin <<'REQS'
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
