"""The wheel is complete: migrations, templates and scripts ship inside the package, so
an installed (not editable) saefeat migrates its catalog and serves its pages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import saefeat
assert saefeat.__file__.startswith(sys.argv[1]), saefeat.__file__
from saefeat.storage.catalog.db import current_revision, upgrade
url = "sqlite:///" + sys.argv[2]
upgrade(url)
print(current_revision(url))
"""


def test_the_wheel_ships_what_the_package_reads(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "-q", "-w", str(tmp_path / "dist"), str(REPO)]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("saefeat-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    revisions = sorted(p.name for p in (REPO / "migrations" / "versions").glob("*.py"))
    for name in ["env.py", "script.py.mako", *(f"versions/{r}" for r in revisions)]:
        assert f"saefeat/migrations/{name}" in names
    for name in ["static/feature.js", "templates/feature.html", "templates/search.html"]:
        assert f"saefeat/api/{name}" in names

    # Installed from the wheel alone (not this checkout), the catalog migrates to head.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(site), str(tmp_path / "catalog.db")],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    head = max(r.split("_")[0] for r in revisions)
    assert out.stdout.strip() == head
