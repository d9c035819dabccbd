"""`saefeat steer`: a continuation with features added or clamped."""

from __future__ import annotations

from typing import Annotated

import typer

from saefeat.cli.common import model_loads, user_errors
from saefeat.config import get_settings


def register(app: typer.Typer) -> None:
    app.command()(user_errors(steer))


def steer(
    sae: Annotated[str, typer.Option(help="SAE id")],
    prompt: Annotated[str, typer.Option(help="text to continue")],
    feature: Annotated[
        list[str],
        typer.Option(
            help="INDEX:STRENGTH, e.g. 123:8.0; repeatable. The strength is a multiple "
            "of the feature's max activation (add: strength x max_act x W_dec[f]; "
            "clamp: the feature set to strength x max_act) unless --units raw"
        ),
    ],  # fmt: skip
    method: Annotated[str, typer.Option(help="add or clamp")] = "add",
    units: Annotated[
        str,
        typer.Option(
            help="max_activation (multiples of each feature's max activation "
            "over the index) or raw (the value added along / clamped to)"
        ),
    ] = "max_activation",  # fmt: skip
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    seed: int = 0,
    max_new_tokens: int = 32,
):
    """Continue PROMPT with features added or clamped, beside the default continuation.
    Strengths count multiples of each feature's max activation; with clamp, 8 raises
    what most readable features make more likely (2-4 keeps the text fluent)."""
    from saefeat.analysis.steer import (
        FeatureStrength,
        SteerRequest,
        check_request,
        in_units,
        steer_for_sae,
    )
    from saefeat.errors import SpecError
    from saefeat.storage.catalog import queries
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.set_registry import sae_model

    pairs = []
    for n, text in enumerate(feature):
        index, sep, strength = text.partition(":")
        try:
            pairs.append(FeatureStrength(int(index), float(strength)))
        except ValueError:
            raise SpecError(f"{text!r} is not INDEX:STRENGTH", field=f"feature.{n}") from None
    request = SteerRequest(prompt, tuple(pairs), method, temperature, seed, max_new_tokens)  # type: ignore[arg-type]
    limit = get_settings().steer_max_new_tokens
    with catalog_session(get_settings()) as s:
        row = queries.get_sae(s, sae)
        check_request(request, d_sae=row.d_sae, max_new_tokens=limit)
        request = in_units(s, sae, request, units)  # type: ignore[arg-type]
        check_request(request, d_sae=row.d_sae, max_new_tokens=limit)
        if not row.checkpoint_path:
            raise SpecError("has no checkpoint here, so it cannot steer", field="sae")
        model_name, revision = sae_model(s, row)
        checkpoint, hook = row.checkpoint_path, row.hook_name
    with model_loads():
        result = steer_for_sae(model_name, revision, checkpoint, hook, request,
                               max_new_tokens=limit)  # fmt: skip
    for f in request.features:
        unit = f" = {f.strength:g} x max activation {f.unit:.4g}" if units != "raw" else ""
        print(f"feature {f.index}: {request.method} {f.value:.4g}{unit}")
    for p in result.promoted:
        print(f"feature {p.index} promotes: {' '.join(repr(t) for t in p.tokens)}")
    for name, run in (("default", result.default), ("steered", result.steered)):
        means = "  ".join(f"{m:.3f}" for m in run.mean_promoted_logprob())
        print(f"--- {name} (mean log-prob of promoted tokens: {means})\n{prompt}{run.text}")
