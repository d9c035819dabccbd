"""An SAE brought in with `saefeat import` (SAELens or sparsify files) is in the catalog:
GET /v1/saes lists it and its pages open before it has an index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from saefeat.api.app import create_app
from saefeat.cli import app as cli
from saefeat.errors import SpecError
from saefeat.sae import SAEConfig
from saefeat.sae.base import sae_class
from saefeat.sae.interop import export_saelens, export_sparsify, import_stored

HOOK = "blocks.3.hook_resid_post"


def random_sae(arch: str):
    k = 5 if arch == "topk" else None
    cfg = SAEConfig(d_in=12, d_sae=48, architecture=arch, k=k, model="m", hook=HOOK)
    return sae_class(arch)(cfg).eval()


def _drop(folder: Path, *keys: str) -> None:
    """Leave keys out of a cfg.json, as files written by the peers lack ours."""
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in keys}))


def _listed(client: TestClient) -> dict[str, dict]:
    body = client.get("/v1/saes").json()
    return {s["id"]: s for s in body["items"]}


def _opens(client: TestClient, sae_id: str) -> dict:
    detail = client.get(f"/v1/saes/{sae_id}")
    assert detail.status_code == 200, detail.text
    page = client.get(f"/saes/{sae_id}")
    assert page.status_code == 200, page.text
    assert sae_id in page.text or detail.json()["name"] in page.text
    return detail.json()


def test_an_imported_saelens_and_sparsify_sae_are_listed_and_open(make_settings, tmp_path):
    settings = make_settings()
    export_saelens(random_sae("jumprelu"), tmp_path / "sl", context_size=32)
    # sparsify's own files: no model or hook in cfg.json, the folder is the hookpoint
    sp = export_sparsify(random_sae("topk"), tmp_path / "run" / "layers.5")
    _drop(sp, "saefeat_model", "saefeat_hook")
    (tmp_path / "run" / "config.json").write_text('{"model": "EleutherAI/pythia-70m"}')
    import_stored(settings, tmp_path / "sl", "from-saelens")
    import_stored(settings, sp, "from-sparsify")
    with TestClient(create_app(settings)) as client:
        listed = _listed(client)
        assert set(listed) == {"from-saelens", "from-sparsify"}
        assert listed["from-saelens"]["architecture"] == "jumprelu"
        assert listed["from-saelens"]["hook"] == HOOK and listed["from-saelens"]["model"] == "m"
        assert listed["from-sparsify"]["hook"] == "blocks.5.hook_resid_post"
        assert listed["from-sparsify"]["model"] == "EleutherAI/pythia-70m"
        for sae_id in listed:
            detail = _opens(client, sae_id)
            assert detail["n_features_indexed"] == 0 and detail["activation_set_id"] is None
            assert detail["cfg"]["imported_from"]["format"] in ("saelens", "sparsify")
    assert (settings.saes_dir / "from-saelens" / "sae.safetensors").is_file()


def test_import_refuses_what_it_cannot_register(make_settings, tmp_path):
    settings = make_settings()
    path = export_saelens(random_sae("topk"), tmp_path / "sl")
    import_stored(settings, path, "one")
    with pytest.raises(SpecError) as err:  # the id is taken
        import_stored(settings, path, "one")
    assert err.value.field == "id"
    sp = export_sparsify(random_sae("topk"), tmp_path / "somewhere")
    _drop(sp, "saefeat_hook")
    with pytest.raises(SpecError) as err:  # no hook in the files or the folder name
        import_stored(settings, sp, "two")
    assert err.value.field == "hook"
    assert not (settings.saes_dir / "two").exists()
    import_stored(settings, sp, "two", hook="blocks.1.hook_mlp_out")
    with TestClient(create_app(settings)) as client:
        assert _listed(client)["two"]["hook"] == "blocks.1.hook_mlp_out"


def test_saefeat_import_lists_the_sae(settings, tmp_path):
    """The command line itself: `saefeat import DIR --id X`, then the server lists X."""
    path = export_saelens(random_sae("relu"), tmp_path / "sl")
    result = CliRunner().invoke(cli, ["import", str(path), "--id", "cli-sae"])
    assert result.exit_code == 0, result.output
    with TestClient(create_app(settings)) as client:
        assert _listed(client)["cli-sae"]["architecture"] == "relu"
        _opens(client, "cli-sae")
