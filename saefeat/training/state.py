"""Training state on disk, for exact resume.

One folder per run: `state.pt` holds the SAE's weights (in training units, before the
input scale is folded in), the optimizer state (Adam's moments in the run's
optimizer_state dtype; SAEAdam casts loaded ones to its own), the step (which fixes the
learning-rate schedule and, with the batches per epoch, the reader's (epoch, batch)
position), the tokens since each latent last fired, the loss history and the RNG states.
It is written to a temporary file and renamed, so a crash while saving keeps the previous
state.

A sweep saves its runs one after another, so a kill between two of them leaves the runs
one checkpoint apart. Its saves keep each run's previous state (`state.prev.pt`, renamed
aside before the new one lands), and resume takes every run at the newest step that all
of them hold (`load_common_step`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saefeat.errors import SpecError

STATE_FORMAT = 1
STATE_FILE = "state.pt"
PREVIOUS_FILE = "state.prev.pt"  # a sweep run's state one checkpoint earlier
# What a state must agree on with the run that resumes it.
IDENTITY_KEYS = ("model", "hook", "hook_out", "activation_set", "architecture", "d_in", "d_sae")


@dataclass
class Position:
    step: int  # optimizer steps done
    epoch: int
    batch: int  # batches already served in this epoch


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}  # fmt: skip
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(folder: Path, state: dict, *, keep_previous: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE_FILE}.{os.getpid()}.tmp"
    torch.save({"format": STATE_FORMAT, **state}, tmp)
    if keep_previous and (folder / STATE_FILE).is_file():
        os.replace(folder / STATE_FILE, folder / PREVIOUS_FILE)
    os.replace(tmp, folder / STATE_FILE)
    return folder / STATE_FILE


def _saved(folder: Path) -> list[Path]:
    """The state files in `folder`, newest first."""
    return [p for p in (folder / STATE_FILE, folder / PREVIOUS_FILE) if p.is_file()]


def has_state(folder: Path) -> bool:
    return bool(_saved(folder))


def load_common_step(folders: list[Path], identities: list[dict], device: torch.device
                     ) -> list[dict]:  # fmt: skip
    """Each folder's state at the newest step every folder holds (a sweep killed between
    two runs' saves resumes from the checkpoint before); SpecError when there is none."""
    saved = [_saved(f) or [f / STATE_FILE] for f in folders]
    newest = [load_state(f, ident, device, paths[0])
              for f, ident, paths in zip(folders, identities, saved, strict=True)]  # fmt: skip
    steps = {s["position"]["step"] for s in newest}
    if len(steps) == 1:
        return newest
    step = min(steps)
    out = []
    for f, ident, paths, state in zip(folders, identities, saved, newest, strict=True):
        if state["position"]["step"] != step and len(paths) > 1:
            state = load_state(f, ident, device, paths[1])
        if state["position"]["step"] != step:
            raise SpecError(f"the sweep's saved states are at different steps {sorted(steps)} "
                            f"and {f} holds none at step {step}; resume them separately",
                            field="resume_from")  # fmt: skip
        out.append(state)
    return out


def load_state(folder: Path, identity: dict, device: torch.device,
               path: Path | None = None) -> dict:  # fmt: skip
    """The saved state (`path`, default the folder's newest), after checking it belongs to
    this run; SpecError otherwise."""
    path = path or (_saved(folder) or [folder / STATE_FILE])[0]
    if not path.is_file():
        raise SpecError(f"no training state at {folder} ({STATE_FILE} missing)",
                        field="resume_from")  # fmt: skip
    # Our own file (it holds numpy RNG state, which weights_only refuses).
    state = torch.load(path, map_location=device, weights_only=False)
    if state.get("format") != STATE_FORMAT:
        raise SpecError(
            f"{path} has training-state format {state.get('format')!r}; this saefeat reads "
            f"format {STATE_FORMAT} only. Start a new run (nothing was changed).",
            field="resume_from",
        )
    wrong = [f"{k}: checkpoint {state['identity'].get(k)!r}, this run {identity[k]!r}"
             for k in IDENTITY_KEYS if state["identity"].get(k) != identity[k]]  # fmt: skip
    if wrong:
        raise SpecError(
            f"{path} is from another run ({'; '.join(wrong)}); nothing was changed",
            field="resume_from",
        )
    return state
