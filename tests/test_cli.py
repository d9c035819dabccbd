"""Bad input on the command line: one line naming the field, exit code 2."""

import json

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
