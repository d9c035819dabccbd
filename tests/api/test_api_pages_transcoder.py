"""The pages of a transcoder name it one and show both its hooks; an SAE's, its one hook."""

from __future__ import annotations

from synthetic_catalog import register_test_sae, synthetic_feature_index

from saefeat.storage.catalog.writer import write_feature_index

READ, WRITE = "blocks.6.ln2.hook_normalized", "blocks.6.hook_mlp_out"


def _indexed(db, sae_id: str, **fields) -> None:
    register_test_sae(db, sae_id, 16, name=f"{sae_id} topk", **fields)
    write_feature_index(db, sae_id, synthetic_feature_index(16, n_examples=2, seed=1))
    db.commit()


def test_a_transcoders_pages_show_its_input_and_output_hooks(client, db):
    _indexed(db, "tc", hook_name=READ, hook_out_name=WRITE)
    sae_page = client.get("/saes/tc")
    assert sae_page.status_code == 200
    assert '<span id="sae-kind">transcoder</span>' in sae_page.text
    assert f'<th>input hook</th><td id="hook-in">{READ}</td>' in sae_page.text
    assert f'<th>output hook</th><td id="hook-out">{WRITE}</td>' in sae_page.text
    feature_page = client.get("/saes/tc/features/0")
    assert feature_page.status_code == 200
    assert f'<code id="hook-in">{READ}</code>' in feature_page.text
    assert f'<code id="hook-out">{WRITE}</code>' in feature_page.text
    assert f"at the output hook, {WRITE}" in feature_page.text  # where steering adds
    assert f"transcoder {READ} → {WRITE}" in client.get("/").text
    summary = client.get("/v1/saes/tc").json()
    assert (summary["kind"], summary["hook"], summary["hook_out"]) == ("transcoder", READ, WRITE)


def test_an_saes_pages_show_its_one_hook(client, db):
    _indexed(db, "plain", hook_name=WRITE)
    sae_page = client.get("/saes/plain").text
    assert f"<th>hook</th><td>{WRITE}</td>" in sae_page
    assert "transcoder" not in sae_page and "output hook" not in sae_page
    feature_page = client.get("/saes/plain/features/0").text
    assert WRITE in feature_page and 'id="hook-out"' not in feature_page
    assert "transcoder" not in feature_page
