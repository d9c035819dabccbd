"""Every benchmark runs: each bench/*.py's --smoke mode (tiny sizes, the real code path)
in a subprocess with a home of its own, and its last line is one JSON object with the
keys its issue names. A bench that stops importing or running fails here, not months
later in someone's measurement (issue 28, item 8).

The smoke runs are started together, at most SMOKE_PARALLEL at a time (most of a run is
process and Ray start-up, not compute), when the first test of this file asks for them;
each test then checks its own. Timings in smoke output mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# bench/*.py that are not benchmarks (imported by one).
HELPERS: set[str] = {"bench_home.py"}
SMOKE_PARALLEL = int(os.environ.get("SAEFEAT_SMOKE_PARALLEL", "2"))
# One bench's smoke run. Quiet, the slowest takes about a minute on 2 cores; at a load
# average of 15-20 (other test sessions) the same runs took up to 7 minutes.
TIMEOUT_S = 900


def _k(names: str) -> tuple[str, ...]:
    return tuple(names.split())


@dataclass(frozen=True)
class Smoke:
    keys: tuple[str, ...]  # keys of the last line's JSON object
    args: tuple[str, ...] = ("--smoke",)
    needs: tuple[str, ...] = ()  # importable modules it needs (skipped without them)
    marks: tuple = ()
    env: dict[str, str] = field(default_factory=dict)


SMOKES: dict[str, Smoke] = {
    "autointerp.py": Smoke(
        keys=_k(
            "sae features explained failed seconds pool_seconds features_per_min_cpu "
            "minutes_for_all_demo_features auroc_true_vs_shuffled_embedding "
            "mean_score_embedding mean_score_shuffled_embedding "
            "auroc_true_vs_shuffled_activation mean_score_activation "
            "mean_score_shuffled_activation"
        ),
        marks=(pytest.mark.slow,),
    ),
    "catalog.py": Smoke(keys=_k("sqlite config")),
    # The CLI's answer time on a small catalog and a 256-token harvest on SmolLM2.
    "cli.py": Smoke(
        keys=_k(
            "cli_features_search_s cli_features_search_token_s cli_jobs_s "
            "cli_catalog_imports_heavy cli_small_harvest_s cli_small_harvest_forward_s "
            "cli_small_harvest_overhead_s tokens features"
        ),
        marks=(pytest.mark.slow,),
    ),
    "contrast.py": Smoke(
        keys=_k(
            "auroc_top32_features contrast_s sae_forward_s contrast_ratio_vs_sae_forward "
            "contrast_pass_s contrast_cold_s tokens_a tokens_b docs_a docs_b "
            "classifier_test_docs"
        ),
        marks=(pytest.mark.slow,),
    ),
    # Model B of a model diff: SmolLM2 fine-tuned on licence text (3 tiny steps here).
    "finetune_domain.py": Smoke(
        keys=_k(
            "model_b steps domain_loss_a domain_loss_b general_loss_a general_loss_b "
            "seconds same_tokenizer saefeat_loads"
        ),
        marks=(pytest.mark.slow,),
    ),
    "harvest.py": Smoke(
        keys=_k(
            "tok_s_truncated_forward tok_s_naive tok_s_saefeat ratio_vs_truncated_forward "
            "ratio_vs_naive saefeat_startup_s bytes_per_token reader_tok_s"
        ),
        marks=(pytest.mark.slow,),
    ),
    # The per-worker path a GPU machine runs; --smoke runs it on the CPU.
    "harvest_worker.py": Smoke(
        keys=_k(
            "harvest_c_over_a harvest_c_over_b harvest_tok_s_a_truncated "
            "harvest_tok_s_b_naive harvest_tok_s_c_shard_harvester "
            "harvest_tok_s_w_write_only harvest_c_over_min_a_w c_rows_equal_a "
            "b_hidden_state_equals_a all_shards_committed checksums_ok"
        ),
        env={"OMP_NUM_THREADS": "1"},
    ),
    # A crosscoder on two models' paired sets; the smoke: two tiny random Llamas.
    "model_diff.py": Smoke(
        keys=_k(
            "sae hook tokens d_sae k fvu_heldout fvu_by_source domain_token_share "
            "n_b_only n_shared n_a_only domain_latent_share_b_only domain_latent_share_shared "
            "mean_domain_fraction_b_only mean_domain_fraction_shared"
        ),
        marks=(pytest.mark.slow,),
    ),
    "quality.py": Smoke(
        keys=_k(
            "fvu_heldout_saefeat fvu_heldout_sparsify fvu_all_tokens_saefeat "
            "dead_frac_heldout_saefeat dead_frac_heldout_sparsify ce_recovered_saefeat "
            "ce_recovered_sparsify excluded_tokens"
        ),
        needs=("sparsify",),
        marks=(pytest.mark.slow,),
    ),
    # GPU timings on a GPU; --smoke is the CPU reference path (CUDA graphs skipped).
    "sae_step.py": Smoke(keys=_k("48x192x4@64 40x160x8@96"), needs=("sparsify",)),
    "readable.py": Smoke(
        keys=_k(
            "tokenchange_vs_projection_overlap10 fragment_share_top10_debiased "
            "auroc_own_vs_neighbour scores_in_unit_interval duplicate_top_windows "
            "steer_concept_success steer_tok_s_over_generate"
        ),
        marks=(pytest.mark.slow,),
    ),
    # Users at once on one server (issue 27): a small SAE, 2 clients for a minute.
    "soak.py": Smoke(
        keys=_k(
            "jobs_failed_for_busy jobs_failed http_5xx read_p95_ms_during rss_growth_mb "
            "orphans_after_stop"
        ),
        marks=(pytest.mark.slow,),
    ),
    # A transcoder against sparsify's on one set, and its features' scores beside an SAE's.
    "transcoder.py": Smoke(
        keys=_k(
            "fvu_heldout_transcoder_saefeat fvu_heldout_transcoder_sparsify "
            "ratio_saefeat_over_sparsify ce_recovered_transcoder auroc_embedding_transcoder "
            "auroc_embedding_sae steps k d_sae tokens"
        ),
        needs=("sparsify",),
        marks=(pytest.mark.slow,),
    ),
    "service.py": Smoke(
        keys=_k(
            "tokens in_process_s http_pipeline_s pipeline_overhead_ratio "
            "api_p95_ms_during_pipeline feature_page_requests"
        ),
        marks=(pytest.mark.slow,),
    ),
}
# Each catalog database's summary (the 16-client p95s), and each sae_step size's.
CATALOG_KEYS = _k(
    "build_s feature_page_p95_ms list_p95_ms label_search_p95_ms token_search_p95_ms "
    "label_write_p95_ms errors index_ratio_vs_sae_forward"
)
SAE_STEP_KEYS = _k(
    "saefeat_ms sparsify_ms torch_ms floor_ms speedup_vs_sparsify ratio_to_floor "
    "bf16state_ms graph_ms"
)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def last_json(self) -> dict:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no output\n{self.tail()}"
        try:
            out = json.loads(lines[-1], parse_constant=_not_json)
        except ValueError as e:
            pytest.fail(f"last line is not JSON ({e}): {lines[-1][:300]!r}\n{self.tail()}")
        assert isinstance(out, dict), f"last line is JSON but not an object: {lines[-1][:300]}"
        return out

    def tail(self) -> str:
        return f"--- stdout (end)\n{self.stdout[-3000:]}\n--- stderr (end)\n{self.stderr[-5000:]}"


def _not_json(constant: str):
    """NaN and Infinity are Python's, not JSON's: a bench printing them has a bug."""
    raise ValueError(f"{constant} is not JSON")


def _missing(smoke: Smoke) -> list[str]:
    return [m for m in smoke.needs if importlib.util.find_spec(m) is None]


def _run(name: str, args: tuple[str, ...], home: Path, extra_env: dict[str, str]) -> Run:
    home.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        SAEFEAT_HOME=str(home),
        RAY_AUTH_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        **extra_env,
    )
    env.pop("SAEFEAT_RAY_ADDRESS", None)  # each bench starts its own local Ray
    env.pop("SAEFEAT_DATABASE_URL", None)
    t0 = time.perf_counter()
    # A session of its own: on a timeout the bench and everything it started (a server,
    # Ray's processes) go together.
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / name), *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        return Run(-9, out, err + f"\ntimed out after {TIMEOUT_S}s", TIMEOUT_S)
    _kill_group(proc.pid)  # whatever it left behind
    return Run(proc.returncode, out, err, time.perf_counter() - t0)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class SmokeRuns:
    """Starts every runnable smoke at once (SMOKE_PARALLEL at a time); `get` waits."""

    def __init__(self, root: Path):
        self.pool = ThreadPoolExecutor(SMOKE_PARALLEL, thread_name_prefix="bench-smoke")
        self.runs: dict[str, Future[Run]] = {}
        self.lock = threading.Lock()
        self.root = root

    def start(self, key: str, name: str, smoke: Smoke) -> None:
        with self.lock:
            if key not in self.runs:
                home = self.root / key.replace(".py", "").replace(" ", "_")
                self.runs[key] = self.pool.submit(_run, name, smoke.args, home, smoke.env)

    def get(self, key: str) -> Run:
        return self.runs[key].result()


def _cases() -> list:
    cases = [pytest.param(name, name, smoke, id=name.removesuffix(".py"), marks=smoke.marks)
             for name, smoke in SMOKES.items()]  # fmt: skip
    postgres = Smoke(keys=_k("postgresql config"),
                     args=("--smoke", "--databases", "postgresql"))  # fmt: skip
    cases.append(pytest.param("catalog.py postgresql", "catalog.py", postgres,
                              id="catalog-postgresql", marks=(pytest.mark.postgres,)))  # fmt: skip
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, request) -> Iterator[SmokeRuns]:
    runs = SmokeRuns(tmp_path_factory.mktemp("bench-smoke"))
    # Start the smokes of every case this session selected, in file order, so they run
    # side by side while the tests wait for their own.
    selected = {item.callspec.id for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}  # fmt: skip
    for case in CASES:
        key, name, smoke = case.values
        if case.id in selected and not _missing(smoke):
            runs.start(key, name, smoke)
    yield runs
    runs.pool.shutdown(wait=True)


def test_every_bench_has_a_smoke():
    """A new bench/*.py must come with its smoke case here."""
    benches = {p.name for p in BENCH.glob("*.py")} - HELPERS
    assert benches == set(SMOKES), (
        f"benches without a smoke case: {sorted(benches - set(SMOKES))}; "
        f"cases without a bench: {sorted(set(SMOKES) - benches)}"
    )


@pytest.mark.parametrize(("key", "name", "smoke"), CASES)
def test_bench_smoke(smoke_runs: SmokeRuns, key: str, name: str, smoke: Smoke):
    if missing := _missing(smoke):
        pytest.skip(f"{name} --smoke needs {', '.join(missing)} (pip install -e '.[dev]')")
    smoke_runs.start(key, name, smoke)  # when this test was selected alone
    run = smoke_runs.get(key)
    print(f"{key} --smoke: {run.seconds:.0f} s")  # shown with -rP / -s
    command = " ".join((name, *smoke.args))
    assert run.returncode == 0, f"{command} exited {run.returncode}\n{run.tail()}"
    out = run.last_json()
    if name == "catalog.py" and "skipped" in out.get("postgresql", {}):
        pytest.skip(f"catalog on PostgreSQL: {out['postgresql']['skipped']}")
    missing_keys = [k for k in smoke.keys if k not in out]
    assert not missing_keys, f"{name}: keys {missing_keys} missing from {sorted(out)}"
    if name == "catalog.py":
        for db in smoke.keys[:-1]:
            summary = out[db]
            assert not [k for k in CATALOG_KEYS if k not in summary], sorted(summary)
            # Every request answered: a route that breaks, or a limit the bench trips
            # (the label-write rate limit did), shows here.
            assert summary["errors"] == 0, summary
    if name == "soak.py":  # not timings: what must hold with users at once
        held = {k: out[k] for k in ("jobs_failed", "http_5xx", "orphans_after_stop")}
        assert held == {"jobs_failed": 0, "http_5xx": 0, "orphans_after_stop": 0}, run.tail()
    if name == "sae_step.py":
        for size in smoke.keys:
            assert not [k for k in SAE_STEP_KEYS if k not in out[size]], sorted(out[size])
            assert out[size]["saefeat_ms"] and out[size]["sparsify_ms"], out[size]
    if name == "cli.py":  # the catalog's commands import neither torch nor Ray
        assert out["cli_catalog_imports_heavy"] == [], out
    if name == "harvest_worker.py":
        checks = ("c_rows_equal_a", "b_hidden_state_equals_a", "all_shards_committed",
                  "checksums_ok")  # fmt: skip
        assert all(out[c] is True for c in checks), {c: out[c] for c in checks}
    if name == "finetune_domain.py":  # saefeat loads model B, whose tokenizer is A's
        assert out["saefeat_loads"] is True and out["same_tokenizer"] is True, out
