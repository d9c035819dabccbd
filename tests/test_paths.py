"""Confinement: corpus paths under the corpus roots, safe ids, models, spec limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saefeat.admission import Admission, Resources, admit_harvest, check_device, check_model
from saefeat.config import Settings
from saefeat.corpus import BUILTIN_PYTHON_DOCS, CorpusRoots, iter_documents
from saefeat.errors import SpecError
from saefeat.paths import check_id, inside
from saefeat.specs import HarvestSpec, IndexSpec, TrainSpec

HOOK = ["blocks.0.hook_resid_post"]
REFUSED = "is not a readable corpus under the corpus roots"


@pytest.fixture
def tree(tmp_path) -> Path:
    """root/ with a.txt, docs/b.txt, a symlink to a file outside and one to a folder
    outside; outside/secret.txt beside the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "docs").mkdir(parents=True)
    outside.mkdir()
    (root / "a.txt").write_text("inside a")
    (root / "docs" / "b.txt").write_text("inside b")
    (outside / "secret.txt").write_text("the secret")
    (root / "docs" / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "docs" / "near.txt").symlink_to(root / "a.txt")  # points in: fine
    (root / "away").symlink_to(outside, target_is_directory=True)
    return tmp_path


def refusal(roots: CorpusRoots, source: str) -> str:
    with pytest.raises(SpecError) as e:
        roots.resolve(source)
    assert e.value.field == "corpus"
    return e.value.message


def test_corpus_paths_resolve_under_the_roots(tree, monkeypatch):
    roots = CorpusRoots.of([tree / "root"])
    assert roots.resolve(str(tree / "root" / "a.txt")) == (tree / "root" / "a.txt").resolve()
    # Relative paths start at the first root, never at the working folder.
    assert roots.resolve("docs/b.txt") == (tree / "root" / "docs" / "b.txt").resolve()
    monkeypatch.chdir(tree)  # the working folder must not matter
    assert roots.resolve("a.txt") == (tree / "root" / "a.txt").resolve()


@pytest.mark.parametrize(
    "source",
    [
        "/etc/passwd",
        "/etc",
        "../outside/secret.txt",
        "../../../../../../etc/passwd",
        "docs/../../outside/secret.txt",
        "away/secret.txt",  # through a symlinked folder that points out
        "docs/leak.txt",  # a symlinked file that points out
        "missing.txt",  # missing: the same answer as forbidden
        "/no/such/file.txt",
    ],
)
def test_outside_missing_and_forbidden_answer_the_same(tree, source):
    roots = CorpusRoots.of([tree / "root"])
    msg = refusal(roots, source)
    assert msg == (
        f"corpus path {source!r} {REFUSED} ({(tree / 'root').resolve()}, {BUILTIN_PYTHON_DOCS})"
    )
    assert "secret" not in msg.replace(source, "")


def test_unreadable_file_answers_like_a_missing_one(tree):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    (tree / "root" / "locked.txt").write_text("x")
    (tree / "root" / "locked.txt").chmod(0)
    roots = CorpusRoots.of([tree / "root"])
    assert REFUSED in refusal(roots, "locked.txt")


def test_no_roots_refuses_every_path(tree):
    assert REFUSED in refusal(CorpusRoots.of([]), "a.txt")
    assert REFUSED in refusal(CorpusRoots.of([]), str(tree / "root" / "a.txt"))


def test_reading_a_folder_refuses_a_symlink_that_points_out(tree):
    roots = CorpusRoots.of([tree / "root"])
    with pytest.raises(SpecError, match="leak.txt in corpus path 'docs' resolves outside"):
        list(iter_documents("docs", roots=roots))
    (tree / "root" / "docs" / "leak.txt").unlink()
    texts = sorted(d.text for d in iter_documents("docs", roots=roots))
    assert texts == ["inside a", "inside b"]  # near.txt points inside: read
    # A folder symlink that points out is refused whole, by the same check.
    with pytest.raises(SpecError, match=REFUSED):
        list(iter_documents("away", roots=roots))
    # The reader checks on its own, whatever the caller checked before.
    with pytest.raises(SpecError, match=REFUSED):
        list(iter_documents(str(tree / "outside" / "secret.txt"), roots=roots))


@pytest.mark.parametrize("bad", ["..", ".", "../x", "a/b", "/abs", "", ".hidden", "x" * 129])
def test_ids_are_one_safe_path_part(bad):
    with pytest.raises(SpecError, match="is not an id") as e:
        check_id(bad, "id")
    assert e.value.field == "id"


def test_ids_accept_what_saefeat_makes():
    for ok in ("sae-0123456789ab", "as-0123456789abcdef", "my_sae.v2", "A"):
        assert check_id(ok, "id") == ok


def test_inside_refuses_a_symlinked_destination(tmp_path):
    saes = tmp_path / "saes"
    saes.mkdir()
    assert inside(saes, "mine", "id") == saes / "mine"
    (saes / "link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SpecError, match="leads outside"):
        inside(saes, "link", "id")


def test_specs_refuse_ids_that_are_paths():
    with pytest.raises(ValueError, match="activation_set"):
        TrainSpec(activation_set="../../etc")
    with pytest.raises(ValueError, match="sae"):
        IndexSpec(sae="../x")


# ---- models -----------------------------------------------------------------------


@pytest.fixture
def server(tmp_path) -> Settings:
    (tmp_path / "home" / "corpora").mkdir(parents=True)
    (tmp_path / "home" / "corpora" / "c.txt").write_text("text")
    (tmp_path / "home" / "models" / "llama").mkdir(parents=True)
    home = tmp_path / "home"
    return Settings(home=home, model_cache=home / "models", allowed_models=["org/allowed", "/m"])


def test_models_come_from_the_cache_or_the_allow_list(server, tmp_path):
    check_model("smollm2-135m", server)
    check_model("org/allowed", server)
    check_model(str(server.models_dir / "llama"), server)
    check_model(str(server.models_dir / "llama" / ".." / "llama"), server)
    (tmp_path / "elsewhere").mkdir()
    refused = []
    for model in [
        str(tmp_path / "elsewhere"),  # exists, outside the cache
        str(server.models_dir / "nope"),  # missing, inside the cache
        str(server.models_dir / ".." / ".." / "elsewhere"),
        "org/other",  # a hub id nobody allowed
        "relative/folder",
    ]:
        with pytest.raises(SpecError) as e:
            check_model(model, server)
        assert e.value.field == "model"
        refused.append(e.value.message.replace(repr(model), "M"))
    assert len(set(refused)) == 1  # missing and forbidden read the same


# ---- limits and resources --------------------------------------------------------------


def field_of(fn, *args) -> str:
    with pytest.raises(SpecError) as e:
        fn(*args)
    return e.value.field


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"ctx_len": 8192}, "ctx_len"),
        ({"token_budget": 2_000_000_000}, "token_budget"),
        ({"batch_size": 4096}, "batch_size"),
        ({"corpus": ["/etc/passwd"]}, "corpus.0.path"),
        ({"corpus": ["builtin:python-docs", "../../.."]}, "corpus.1.path"),
        ({"model": "/etc"}, "model"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_admission_names_the_field(server, update, field):
    spec = HarvestSpec(hooks=HOOK, **update)
    assert field_of(admit_harvest, spec, Admission(server)) == field


def test_admission_accepts_a_spec_within_limits(server):
    ctx = Admission(server)
    admit_harvest(HarvestSpec(hooks=HOOK, corpus=["c.txt", BUILTIN_PYTHON_DOCS]), ctx)
    admit_harvest(HarvestSpec(hooks=HOOK, ctx_len=4096, batch_size=1024, device="cpu"), ctx)


def test_devices_and_workers_fit_the_cluster():
    cpu_only, two_gpus = Resources(cpus=4, gpus=0), Resources(cpus=8, gpus=2)
    check_device("cpu", 4, cpu_only)
    check_device(None, None, cpu_only)
    check_device("cuda:1", 2, two_gpus)
    check_device(None, 2, two_gpus)  # no device: the GPUs, one worker each
    assert field_of(check_device, "cuda", None, cpu_only) == "device"
    assert field_of(check_device, "cuda:2", None, two_gpus) == "device"
    assert field_of(check_device, "cuda:x", None, two_gpus) == "device"
    assert field_of(check_device, "cpu", 5, cpu_only) == "workers"
    assert field_of(check_device, "cuda", 3, two_gpus) == "workers"
    assert field_of(check_device, None, 3, two_gpus) == "workers"
    check_device("cpu", 8, two_gpus)
    check_device("cuda:7", 100, None)  # a remote cluster not joined: format only
    assert field_of(check_device, "gpu", None, None) == "device"


def test_lists_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEFEAT_HOME", str(tmp_path))
    assert Settings().corpus_root_paths == [tmp_path / "corpora"]  # the default
    monkeypatch.setenv("SAEFEAT_CORPUS_ROOTS", "/data/a,/data/b")
    monkeypatch.setenv("SAEFEAT_ALLOWED_MODELS", '["org/model", "/srv/m"]')
    s = Settings()
    assert s.corpus_root_paths == [Path("/data/a"), Path("/data/b")]
    assert s.allowed_models == ["org/model", "/srv/m"]
