"""Bad input on the command line: one line naming the field, exit code 2."""

import json
import re

import pytest
from typer.testing import CliRunner

from saefeat.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize(
    "args, field",
    [
        (["--model", "no-such-org/no-such-model", "--hook", "blocks.0.hook_resid_post"], "model"),
        (["--hook", "blocks.99.hook_resid_post"], "layer 99 does not exist"),
        (["--hook", "blocks.1.hook_nonsense"], "hook"),
        (["--hook", "blocks.1.hook_resid_post", "--tokens", "0"], "token_budget"),
        (["--hook", "blocks.1.hook_resid_post", "--corpus", "/no/such/file.txt"], "corpus"),
    ],
)
def test_harvest_bad_input(settings, tiny_llama, args, field):
    if "--model" not in args:
        args = ["--model", str(tiny_llama), *args]
    code, out = run("harvest", *args)
    assert code == 2, out
    assert field in out
    assert "Traceback" not in out
    assert not list(settings.activations_dir.glob("*.zarr"))  # nothing half-written


def test_empty_corpus(settings, tiny_llama, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, out = run("harvest", "--model", str(tiny_llama), "--hook", "blocks.1.hook_resid_post",
                    "--corpus", str(empty))  # fmt: skip
    assert code == 2 and "corpus" in out


def test_train_unknown_set(settings):
    code, out = run("train", "--set", "as-doesnotexist")
    assert code == 2 and "as-doesnotexist" in out


def test_train_options_come_from_the_spec_and_the_architectures(settings):
    from saefeat.cli.train import train_options
    from saefeat.sae import arch_settings
    from saefeat.specs import TrainSpec

    code, out = run("train", "--help")
    assert code == 0
    for name in arch_settings():
        assert f"--{name.replace('_', '-')}" in out
    options = {p.name: p for p in train_options()}
    assert all(
        p.default is None for n, p in options.items() if n not in ("activation_set", "architecture")
    )
    batch_help = options["batch_size"].annotation.__metadata__[0].help
    assert f"default {TrainSpec.model_fields['batch_size'].default}" in batch_help
    code, out = run("train", "--set", "as-missing", "--architecture", "nope")
    assert code == 2 and "architecture" in out and "topk" in out
    code, out = run("train", "--set", "as-missing", "--d-sae", "8", "--k", "8")
    assert code == 2 and "k must be < d_sae" in out


def test_keys_create_prints_a_key(settings):
    code, out = run("keys", "create", "--name", "me", "--scope", "label")
    assert code == 0 and out.startswith("sfk_")
    code, out = run("keys", "create", "--scope", "root")
    assert code == 2 and "scope" in out.lower()


@pytest.mark.parametrize("fmt, weights", [("saelens", "sae_weights"), ("sparsify", "sae")])
def test_export_then_import_gives_the_same_sae(settings, tmp_path, fmt, weights):
    import torch

    from saefeat.sae import SAEConfig, load_sae
    from saefeat.sae.topk import TopKSAE

    sae = TopKSAE(SAEConfig(d_in=8, d_sae=32, k=3, model="m", hook="blocks.0.hook_resid_post"))
    sae.save(settings.saes_dir / "orig")
    code, out = run("export", "--sae", "orig", "--to", fmt, "--out", str(tmp_path / fmt))
    assert code == 0, out
    assert (tmp_path / fmt / f"{weights}.safetensors").is_file()
    code, out = run("import", str(tmp_path / fmt), "--id", "back")
    assert code == 0, out
    x = torch.randn(5, 8)
    torch.testing.assert_close(load_sae(settings.saes_dir / "back")(x).x_hat, sae(x).x_hat)
    code, out = run("export", "--sae", "orig", "--to", "onnx", "--out", str(tmp_path / "x"))
    assert code == 2 and "onnx" in out


@pytest.mark.parametrize("bad", ["../x", "../../x", "..", "a/b", "/tmp/x", ".x", "link"])
def test_import_id_stays_in_the_sae_folder(settings, tmp_path, bad):
    from saefeat.sae import SAEConfig
    from saefeat.sae.topk import TopKSAE

    cfg = SAEConfig(d_in=8, d_sae=32, k=3, model="m", hook="blocks.0.hook_resid_post")
    TopKSAE(cfg).save(settings.saes_dir / "orig")
    assert run("export", "--sae", "orig", "--to", "sparsify", "--out", str(tmp_path / "sp"))[0] == 0
    (settings.saes_dir / "link").symlink_to(tmp_path, target_is_directory=True)
    before = sorted(p for p in tmp_path.rglob("*") if "sp" not in p.parts)
    code, out = run("import", str(tmp_path / "sp"), "--id", bad)
    assert code == 2 and out.startswith("error: id: "), out
    assert sorted(p for p in tmp_path.rglob("*") if "sp" not in p.parts) == before
    code, out = run(
        "export", "--sae", "../saes/orig", "--to", "sparsify", "--out", str(tmp_path / "o")
    )
    assert code == 2 and "sae" in out


def test_harvest_two_weighted_sources(settings, tiny_llama, tmp_path, ray_session, monkeypatch):
    """The CLI reads the files its user names, outside the corpus roots too, and takes a
    relative path from the working folder."""
    from saefeat.config import get_settings

    monkeypatch.setenv("SAEFEAT_CORPUS_ROOTS", json.dumps([str(tmp_path / "roots")]))
    get_settings.cache_clear()
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text("alpha beta gamma delta. " * 40)
    b.write_text("\n".join('{"body": "one two three four five six seven"}' for _ in range(40)))
    monkeypatch.chdir(tmp_path)
    code, out = run(
        "harvest", "--model", str(tiny_llama), "--hook", "blocks.1.hook_resid_post",
        "--corpus", "a.txt@1", "--corpus", f"{b}@3", "--field", "body", "--tokens", "1024",
        "--ctx-len", "16", "--shard-contexts", "8",
    )  # fmt: skip
    assert code == 0, out
    from saefeat.storage.activations import open_set

    aset = open_set(settings.activations_dir, out.splitlines()[-1].strip())
    sources = {d.split("/")[0] for d in aset.group.attrs["doc_ids"]}
    assert sources == {"0", "1"}  # both sources were mixed in


def test_serve_with_several_workers(settings):
    """`saefeat serve --workers 2`: the catalog is migrated once, then both processes
    answer (each builds its app from the environment)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    saefeat = str(Path(sys.executable).parent / "saefeat")  # the installed entry point
    command = [saefeat, "serve", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(command, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json()
            except httpx.HTTPError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.3)
        assert body is not None and body["status"] == "ok" and body["schema_revision"]
        statuses = {httpx.get(f"http://127.0.0.1:{port}/v1/saes").status_code for _ in range(8)}
        assert statuses == {200}
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---- a CLI that answers at once, runs that are jobs (issue 22) -------------------------

# Runs the CLI as `saefeat` would, then says on stderr whether torch or Ray were imported.
PROBE = """
import sys
from saefeat.cli import app
code = 0
try:
    app(sys.argv[1:], prog_name="saefeat")
except SystemExit as e:
    code = e.code or 0
print("HEAVY", ",".join(m for m in ("torch", "ray", "transformers") if m in sys.modules),
      file=sys.stderr)
sys.exit(code)
"""


def test_catalog_commands_import_neither_torch_nor_ray(settings, tmp_path):
    import os
    import subprocess
    import sys

    from synthetic_catalog import register_test_sae, synthetic_feature_index

    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.labels import add_label
    from saefeat.storage.catalog.queries import get_feature
    from saefeat.storage.catalog.writer import write_feature_index

    with catalog_session(settings) as s:
        register_test_sae(s, "sae-a", 20)
        write_feature_index(s, "sae-a", synthetic_feature_index(20, seed=9))
        add_label(s, get_feature(s, "sae-a", 3), text="closing brackets")
        s.commit()
    commands = [
        ["features", "search", "--label", "brackets"],
        ["features", "search", "--token", "Ġcat"],
        ["features", "list", "--sae", "sae-a"],
        ["features", "neighbours", "--sae", "sae-a", "--index", "3"],
        ["jobs"],
        ["export", "--sae", "sae-a", "--to", "neuronpedia", "--out", str(tmp_path / "np")],
    ]
    env = {k: v for k, v in os.environ.items() if k != "SAEFEAT_SERVER"}
    for args in commands:
        done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, text=True,
                              capture_output=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, (args, done.stdout, done.stderr[-2000:])
        heavy = done.stderr.strip().splitlines()[-1]
        assert heavy == "HEAVY", (args, heavy)  # none of torch, ray, transformers
        if args[:2] == ["features", "search"] and "--label" in args:
            assert "closing brackets" in done.stdout


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if anything starts (or joins) Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for work this process can do")

    for module in ("runtime", "harvest", "index", "explain"):
        monkeypatch.setattr(f"saefeat.workers.{module}.ensure_ray", refuse)


def test_cli_runs_are_job_rows_and_start_no_ray(settings, tiny_llama, tmp_path, no_ray):
    """harvest, train, index and explain from the CLI: each a job row that GET /v1/jobs
    and the jobs page show with its status and progress, run in this process."""
    from fastapi.testclient import TestClient

    from saefeat.api.app import create_app

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def add(a, b):\n    return a + b\n" * 200)
    code, out = run("harvest", "--model", str(tiny_llama), "--hook", "blocks.1.hook_resid_post",
                    "--corpus", str(corpus), "--tokens", "640", "--ctx-len", "32",
                    "--shard-contexts", "8", "--model-dtype", "float32")  # fmt: skip
    assert code == 0, out
    assert "harvest " in out and "succeeded: 640/640 tokens (100%)" in out  # plain lines
    set_id = out.splitlines()[-1].strip()
    code, out = run("train", "--set", set_id, "--d-sae", "32", "--k", "4", "--batch-size", "64",
                    "--epochs", "1")  # fmt: skip
    assert code == 0, out
    sae_id = out.splitlines()[-1].strip()
    code, out = run("index", "--sae", sae_id, "--examples", "4", "--window", "2")
    assert code == 0, out
    assert "1/1 tasks" not in out and "batches" in out
    assert "the SAE over the set" in out and "token effects" in out  # its phases
    code, out = run("explain", "--sae", sae_id, "--features", "0-3", "--explainer", "offline",
                    "--scorers", "keyword")  # fmt: skip
    assert code == 0, out

    client = TestClient(create_app(settings))
    jobs = {j["kind"]: j for j in client.get("/v1/jobs").json()["items"]}
    assert set(jobs) == {"harvest", "train", "index", "explain"}
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    assert jobs["harvest"]["progress_done"] == jobs["harvest"]["progress_total"] == 640
    index = jobs["index"]  # counts batches of tokens (the SAE's, the model's), not tasks
    # 640 tokens of 32 in shards of 8 contexts: 3 of the SAE's batches, then the effects'
    assert index["unit"] == "batches" and index["progress_done"] == index["progress_total"] > 3
    assert jobs["train"]["unit"] == "steps" and jobs["train"]["progress_total"] > 1
    assert jobs["explain"]["progress_done"] == jobs["explain"]["progress_total"] == 4
    assert client.get("/jobs").status_code == 200
    out = runner.invoke(app, ["jobs"]).output  # not a terminal: tab-separated, nothing cut
    assert out.count("succeeded") == 4
    assert all(len(line.split("\t")) == 8 for line in out.splitlines()), out
    assert jobs["index"]["id"] in out and "…" not in out
    wide = runner.invoke(app, ["jobs"], env={"FORCE_COLOR": "1", "COLUMNS": "60"})
    screen = re.sub(r"\x1b\[[0-9;]*m", "", wide.output)  # a terminal: a table, cells wrap
    assert wide.exit_code == 0 and "…" not in screen and "┃ id" in screen
    assert max(len(line) for line in screen.splitlines()) <= 60


def _fake_server(monkeypatch, status: str = "succeeded") -> list:
    """Remote's calls recorded; every job answers `status` at once."""
    from saefeat.remote import Remote

    calls = []

    def submit(self, kind, spec, idempotency_key=None):
        calls.append((kind, spec))
        return {"job_id": f"0123456789ab-{kind}", "status": "queued", "location": "/v1/jobs/x"}

    def job(self, job_id):
        return {"id": job_id, "kind": job_id.split("-")[1], "status": status, "unit": "u",
                "progress_done": 3, "progress_total": 3, "rate": 1.5, "eta_seconds": None,
                "created_at": "2026-01-01T00:00:00", "updated_at": "2026-01-01T00:01:05",
                "stages": None, "error": "boom" if status == "failed" else None}  # fmt: skip

    monkeypatch.setattr(Remote, "submit", submit)
    monkeypatch.setattr(Remote, "job", job)
    return calls


def test_work_commands_with_a_server_submit_there_and_watch(settings, monkeypatch, no_ray):
    from saefeat.specs import TrainSpec

    calls = _fake_server(monkeypatch)
    env = {"SAEFEAT_SERVER": "http://127.0.0.1:9"}
    cases = [
        (["harvest", "--hook", "blocks.1.hook_resid_post", "--corpus", "docs/a.txt",
          "--tokens", "1024"], "harvest",
         {"hooks": ["blocks.1.hook_resid_post"], "corpus": [{"path": "docs/a.txt"}],
          "token_budget": 1024}),
        (["train", "--set", "as-x", "--d-sae", "64", "--k", "4"], "train",
         {"activation_set": "as-x", "d_sae": 64, "architecture": {"name": "topk", "k": 4}}),
        (["index", "--sae", "sae-x", "--examples", "5"], "index",
         {"sae": "sae-x", "n_examples": 5}),
        (["explain", "--sae", "sae-x", "--features", "1-2"], "explain",
         {"sae": "sae-x", "features": [1, 2]}),
    ]  # fmt: skip
    for args, kind, fields in cases:
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        sent_kind, body = calls.pop()
        assert sent_kind == kind and {k: body.get(k) for k in fields} == fields, body
        assert f"submitted {kind} job 0123456789ab-{kind}" in result.output
        line = f"{kind} 01234567 succeeded: 3/3 u (100%), 1.5 u/s, elapsed 0:01:05"
        assert result.output.count(f"{kind} 01234567") == 1 and line in result.output
    # the ids a harvest and a training make are known before they run: printed
    result = runner.invoke(app, cases[1][0], env=env)
    assert result.output.strip().splitlines()[-1] == TrainSpec(
        activation_set="as-x", d_sae=64, k=4).sae_id()  # fmt: skip
    assert not settings.activations_dir.exists()  # nothing ran here
    calls = _fake_server(monkeypatch, status="failed")
    result = runner.invoke(app, ["index", "--sae", "sae-x"], env=env)
    assert result.exit_code == 1 and "index job 0123456789ab-index failed: boom" in result.output
