"""A throwaway SAEFEAT_HOME for one benchmark run (imported by benchmarks; not one)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def fresh_home(name: str) -> Path:
    """A new temporary home, removed at exit, set as SAEFEAT_HOME; the shared model cache
    (so the embedded model is converted once per machine, not per run), quiet tokenizers."""
    home = Path(tempfile.mkdtemp(prefix=f"saefeat-bench-{name}-"))
    atexit.register(shutil.rmtree, home, True)
    os.environ["SAEFEAT_HOME"] = str(home)
    os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache/saefeat/models"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return home
