"""`saefeat train`: its options come from TrainSpec and the architectures' configs."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from saefeat.cli.common import console, user_errors
from saefeat.cli.spec_options import KEYWORD, command, field_help, field_option, given, spec_options
from saefeat.sae import architectures, config_class
from saefeat.specs import TrainSpec


def do_train(spec):
    """Train here, as a job row (saefeat/cli/running.py), in this process; prints and
    returns the TrainResult."""
    from saefeat.cli.running import run_here
    from saefeat.specs import TrainJobSpec

    (result,), _ = run_here(TrainJobSpec(specs=[spec]), train_here)
    console.print(f"SAE [bold]{result.sae_id}[/bold] in {result.seconds:.1f}s -> "
                  f"{result.checkpoint}")  # fmt: skip
    console.print(held_out_summary(result.metrics), highlight=False)
    return result


def train_here(spec, *, settings, progress, should_stop, note):
    """The train kind's work in this process (its own runs it in a Ray task): the
    sweep trained and registered; a run that stopped resumes from its checkpoint."""
    from saefeat.storage.catalog.job_status import JobStatus
    from saefeat.workers.job_kinds import JobOutcome
    from saefeat.workers.train_job import train_and_record

    def report(step: int, total: int, loss: float) -> None:
        progress(step, total)
        note(f"loss {loss:.4f}")

    results = train_and_record(list(spec.specs), settings=settings, progress=report)
    return JobOutcome(JobStatus.SUCCEEDED, None, results)


def held_out_summary(mt: dict) -> str:
    """The held-out figures of a trained SAE, as `saefeat train` and the demo print them."""
    held, ex, tr = mt["heldout"], mt["excluded_tokens"], mt["excluded_tokens_train"]
    where = (f"{held['contexts']} held-out contexts" if held["held_out_of_training_set"]
             else f"eval set {held['eval_set']} ({held['contexts']} contexts)")  # fmt: skip
    ce = (f"CE loss recovered {mt['ce_loss_recovered']:.3f}, KL {mt['kl_div_with_sae']:.4f}"
          if "ce_loss_recovered" in mt else "CE/KL not measured")  # fmt: skip
    positions = ", ".join(f"{p}: {n}" for p, n in ex["massive_positions"].items()) or "none"
    return (
        f"held-out ({where}, {mt['n_tokens']:,} typical tokens): FVU {mt['fvu']:.4f} "
        f"(all tokens but position 0: {mt['fvu_all_tokens']:.4f}), L0 {mt['l0']:.1f}, "
        f"dead {mt['dead_frac']:.2%}, dense {mt['dense_frac']:.2%}, {ce}\n"
        f"excluded ({ex['rule']}): held-out {ex['excluded']:,} of {ex['tokens']:,} tokens "
        f"({ex['massive']} massive; positions {positions}); training "
        f"{tr['excluded']:,} of {tr['tokens']:,} ({tr['massive']} massive)"
    )


# TrainSpec fields offered as options; every architecture's settings are offered too.
SPEC_OPTIONS = ("hook", "hook_out", "skip_connection", "d_sae", "expansion_factor",
                "batch_size", "lr", "epochs", "seed", "eval_set", "heldout_frac",
                "massive_norm_threshold", "optimizer_state")  # fmt: skip


def train_options() -> list[inspect.Parameter]:
    """--set and --architecture, the spec's fields, then each architecture setting once;
    every default is None here, so the spec's (or the config's) default applies."""
    fields = TrainSpec.model_fields
    names = architectures()
    params = [
        field_option("activation_set", fields["activation_set"], "--set", required=True),
        # None: the spec's default (topk; batchtopk for a crosscoder)
        inspect.Parameter("architecture", KEYWORD, default=None, annotation=Annotated[
            str | None, typer.Option(help=", ".join(names) + " (default: topk; a "
                                     "crosscoder's batchtopk)")]),
    ]  # fmt: skip
    params += spec_options(TrainSpec, SPEC_OPTIONS)
    source_help = ("a crosscoder's source, HOOK or SET:HOOK (another model's set of the "
                   "same tokens); twice or more")  # fmt: skip
    params.append(inspect.Parameter("source", KEYWORD, default=None, annotation=Annotated[
        list[str] | None, typer.Option(help=source_help)]))  # fmt: skip
    owners: dict[str, list[str]] = {}
    for arch in names:
        for n in config_class(arch).model_fields:
            if n != "name":
                owners.setdefault(n, []).append(arch)
    for n, archs in sorted(owners.items()):
        field = config_class(archs[0]).model_fields[n]
        params.append(field_option(n, field, help=field_help(field, archs)))
    return params


def train(**options) -> None:
    """Train an SAE (TopK by default) on an activation set; print its held-out metrics.

    Here, as a job (`saefeat jobs`); with --server (SAEFEAT_SERVER), on that server."""
    from saefeat.cli.running import on_server, run_on_server

    sources = options.pop("source", None)
    if sources:
        options["sources"] = [_source(s) for s in sources]
    spec = TrainSpec(**given(options))
    if on_server():
        run_on_server("train", spec)
        print(spec.sae_id())
        return
    _check_reads(spec)  # a missing set or hook: one line and no job row, as the API's 422
    print(do_train(spec).sae_id)


def _check_reads(spec: TrainSpec) -> None:
    from saefeat.config import get_settings
    from saefeat.training.sources import open_sources
    from saefeat.training.trainer import open_complete_set

    settings = get_settings()
    open_sources(settings, spec, open_complete_set(settings, spec.activation_set))


def _source(text: str) -> dict:
    """`--source HOOK` (a hook of --set) or `--source SET:HOOK`."""
    sid, sep, hook = text.rpartition(":")
    return {"activation_set": sid, "hook": hook} if sep else {"hook": hook}


def register(app: typer.Typer) -> None:
    app.command()(command(user_errors(train), train_options()))
