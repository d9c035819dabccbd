"""Putting an SAE into the catalog: one call instead of a page of manual steps."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.shapes import check_active_count, check_transcoder_hooks
from saefeat.storage.catalog.models import SAE


def _positive(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"must be a positive integer, got {value!r}", field=field)
    return value


def register_sae(
    session: Session,
    *,
    name: str,
    model_name: str,
    hook_name: str,
    architecture: str,
    d_in: int,
    d_sae: int,
    k: int | None = None,
    cfg: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    checkpoint_path: str | None = None,
    activation_set_id: str | None = None,
    sae_id: str | None = None,
    hook_out_name: str | None = None,
) -> SAE:
    """Create the SAE row, or update it if `sae_id` is already registered.

    Re-registering (e.g. after more training or a new eval) keeps its features and labels.
    `sae_id` defaults to a random hex id. The caller commits.
    """
    _positive(d_in, "d_in")
    _positive(d_sae, "d_sae")
    if k is not None:
        check_active_count(_positive(k, "k"), d_sae)
    if not name.strip():
        raise SpecError("must not be blank", field="name")
    sae = session.get(SAE, sae_id) if sae_id else None
    if sae is not None and sae.d_sae != d_sae:
        # Features are indexed by latent; changing their number would orphan them.
        raise SpecError(
            f"SAE {sae_id!r} is registered with d_sae={sae.d_sae}; register the new "
            f"checkpoint under another id",
            field="d_sae",
        )
    if sae is None:
        sae = SAE(id=sae_id or uuid.uuid4().hex)
        session.add(sae)
    sae.name = name
    sae.model_name = model_name
    if hook_out_name is not None:
        check_transcoder_hooks(hook_name, hook_out_name)
    sae.hook_name = hook_name
    sae.hook_out_name = hook_out_name
    sae.architecture = architecture
    sae.d_in = d_in
    sae.d_sae = d_sae
    sae.k = k
    sae.cfg = dict(cfg or {})
    sae.metrics = dict(metrics or {})
    sae.checkpoint_path = checkpoint_path
    sae.activation_set_id = activation_set_id
    session.flush()
    return sae
