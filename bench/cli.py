"""How soon the `saefeat` command answers, measured in one run on a fresh home.

(a) `saefeat features search` (a label and a token search) as a new process on a small
    catalog (synthetic features, tests/synthetic_catalog.py): its wall time, the median
    of REPEATS runs, and whether the process imported torch or Ray (it must not);
(b) `saefeat jobs` the same way;
(c) `saefeat harvest` of TOKENS tokens of the built-in corpus on the embedded model
    (SmolLM2-135M) as a new process: its wall time, minus the model's forward over the
    same tokens (the set's own, the same hook and batch size) timed here after the
    harvest: what is left is the command's overhead (imports, tokenizing, the model's
    load, the writes, the catalog, and any cluster start).

    python bench/cli.py            # 3,000 tokens
    python bench/cli.py --smoke    # 256 tokens: a crash check (timings mean nothing)

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_home import fresh_home

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3
HOOK = "blocks.3.hook_resid_post"
# Runs the CLI as `saefeat` would, then prints whether torch or Ray were imported.
PROBE = (
    "import sys\n"
    "from saefeat.cli import app\n"
    "code = 0\n"
    "try:\n"
    "    app(sys.argv[1:], prog_name='saefeat')\n"
    "except SystemExit as e:\n"
    "    code = e.code or 0\n"
    "print('HEAVY', sorted(m for m in ('torch', 'ray') if m in sys.modules), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_cli(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, text=True,
                          capture_output=True, cwd=ROOT)  # fmt: skip
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"saefeat {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done


def heavy_modules(done: subprocess.CompletedProcess) -> list[str]:
    line = [x for x in done.stderr.splitlines() if x.startswith("HEAVY ")][-1]
    return json.loads(line.removeprefix("HEAVY ").replace("'", '"'))


def seed_catalog(n_features: int) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic_catalog import register_test_sae, synthetic_feature_index

    from saefeat.config import get_settings
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.labels import add_label
    from saefeat.storage.catalog.queries import get_feature
    from saefeat.storage.catalog.writer import write_feature_index

    with catalog_session(get_settings()) as s:
        register_test_sae(s, "sae-bench", n_features)
        write_feature_index(s, "sae-bench", synthetic_feature_index(n_features, seed=3))
        for i in range(0, n_features, 7):
            add_label(s, get_feature(s, "sae-bench", i), text=f"closing brackets {i}")
        s.commit()
    return "sae-bench"


def forward_seconds(set_id: str, batch_size: int) -> tuple[float, int]:
    """The model's forward up to HOOK over the set's tokens, as the harvest runs it."""
    import torch

    from saefeat.config import get_settings
    from saefeat.lm import auto_dtype, cached_model, run_to_hooks
    from saefeat.storage.activations import open_set

    aset = open_set(get_settings().activations_dir, set_id)
    tokens = torch.from_numpy(aset.tokens()).long()
    lm = cached_model(aset.model_name, aset.revision, "cpu", auto_dtype("cpu"))
    points = lm.check_hooks([HOOK])
    batches = list(tokens.split(batch_size))
    run_to_hooks(lm, batches[0], points)  # warm-up: first-call allocations, page-ins
    t0 = time.perf_counter()
    for b in batches:
        run_to_hooks(lm, b, points)
    return time.perf_counter() - t0, int(tokens.numel())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="256 tokens, 50 features")
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--features", type=int, default=2000)
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.features = 256, 50

    fresh_home("cli")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in ("SAEFEAT_SERVER", "SAEFEAT_RAY_ADDRESS"):  # this machine, no server
        os.environ.pop(name, None)
    env = dict(os.environ)

    sae = seed_catalog(args.features)
    searches = {"label": ["features", "search", "--label", "brackets", "--limit", "20"],
                "token": ["features", "search", "--token", "Ġcat", "--sae", sae]}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in (*searches, "jobs")}
    heavy: set[str] = set()
    for _ in range(REPEATS):
        for name, cli_args in (*searches.items(), ("jobs", ["jobs"])):
            seconds, done = run_cli(cli_args, env)
            times[name].append(seconds)
            heavy |= set(heavy_modules(done))
    label_s, token_s, jobs_s = (statistics.median(times[k]) for k in ("label", "token", "jobs"))
    print(f"features search: label {label_s:.2f}s, token {token_s:.2f}s; jobs {jobs_s:.2f}s; "
          f"imported {sorted(heavy) or 'neither torch nor ray'}")  # fmt: skip

    harvest_args = ["harvest", "--hook", HOOK, "--tokens", str(args.tokens)]
    harvest_s, done = run_cli(harvest_args, env)
    set_id = done.stdout.strip().splitlines()[-1]
    batch_size = 8  # HarvestSpec's default, which the command used
    forward_s, n_tokens = forward_seconds(set_id, batch_size)
    overhead = harvest_s - forward_s
    print(f"harvest of {n_tokens:,} tokens: {harvest_s:.1f}s as a command, forward alone "
          f"{forward_s:.1f}s: overhead {overhead:.1f}s")  # fmt: skip
    print(json.dumps({
        "cli_features_search_s": round(label_s, 3),
        "cli_features_search_token_s": round(token_s, 3),
        "cli_jobs_s": round(jobs_s, 3),
        "cli_catalog_imports_heavy": sorted(heavy),
        "cli_small_harvest_s": round(harvest_s, 2),
        "cli_small_harvest_forward_s": round(forward_s, 2),
        "cli_small_harvest_overhead_s": round(overhead, 2),
        "tokens": n_tokens,
        "features": args.features,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
