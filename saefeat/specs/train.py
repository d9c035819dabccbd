"""TrainSpec (one SAE) and TrainJobSpec (a sweep of them on one set, and where it runs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from saefeat.errors import SpecError
from saefeat.sae.base import ArchConfig, arch_settings, config_class
from saefeat.sae.topk import TopKConfig
from saefeat.shapes import TRANSCODER_OUTPUTS, check_transcoder_hooks, parse_hook
from saefeat.specs.base import Id, Spec, content_id
from saefeat.storage.exclusion import DEFAULT_THRESHOLD

# Flat names older specs used for architecture settings -> the config field they fill.
LEGACY_ARCH_FIELDS = {
    "jumprelu_target_l0": "target_l0",
    "jumprelu_sparsity_coefficient": "sparsity_coefficient",
    "jumprelu_bandwidth": "bandwidth",
    "jumprelu_init_threshold": "init_threshold",
}
SAE_ID_DIGITS = 12  # SAE ids predate the 16-digit rule; they are folder names, so they stay


def _architecture_from_flat(data: dict) -> dict:
    """Fold settings given beside `architecture` (`k=4`, `l1_coefficient=...`, the older
    `jumprelu_*` names) into its config; a setting of another architecture is dropped, as
    the flat spec ignored it. A config given whole (a dict or object) is left alone."""
    arch = data.get("architecture", "topk")
    if not isinstance(arch, str):
        return data
    data = dict(data)
    names = arch_settings() | set(LEGACY_ARCH_FIELDS) | {"jumprelu_sparsity"}
    flat = {key: data.pop(key) for key in list(data) if key in names}
    if arch == "jumprelu" and "k" in flat:  # older specs: the target L0 defaulted to k
        flat.setdefault("jumprelu_target_l0", flat["k"])
    if flat.pop("jumprelu_sparsity", None) == "l0_penalty":  # older specs: no target
        flat["jumprelu_target_l0"] = None
    fields = config_class(arch).model_fields
    settings = {LEGACY_ARCH_FIELDS.get(k, k): v for k, v in flat.items()}
    data["architecture"] = {"name": arch} | {k: v for k, v in settings.items() if k in fields}
    return data


def _parsed(hook: str, field: str):
    try:
        return parse_hook(hook, field)
    except SpecError as e:
        raise ValueError(e.message) from None


class Source(BaseModel):
    """One source of a crosscoder: a hook of an activation set."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    activation_set: Id | None = Field(
        None, description="the set (default: the spec's activation_set); another model's "
        "set must hold the same tokens (a paired harvest makes such sets)",
    )  # fmt: skip
    hook: str = Field(description="the hook, e.g. blocks.15.hook_resid_post")

    @field_validator("hook")
    @classmethod
    def _a_hook(cls, hook: str) -> str:
        parse_hook(hook, "hook")
        return hook


class TrainSpec(Spec):
    """One SAE to train. `architecture` is the architecture's own config (saefeat/sae/*.py),
    picked by its `name`; its settings may also be given flat beside it (`k=4`)."""

    ID_FIELDS = (
        "activation_set", "hook", "architecture", "d_sae", "expansion_factor",
        "auxk_coefficient", "dead_after_tokens", "init_decoder_norm", "geometric_median_init",
        "batch_size", "lr", "lr_warmup_frac", "lr_decay_frac", "grad_clip", "epochs", "seed",
        "massive_norm_threshold", "heldout_frac", "eval_set",
    )  # fmt: skip
    # Joined later: hashed only when set, so every SAE id made before stays.
    ID_FIELDS_IF_SET = ("optimizer_state", "hook_out", "skip_connection", "sources")
    RUN_FIELDS = ("device", "name", "checkpoint_every_tokens", "eval_ce_contexts", "resume_from")

    activation_set: Id = Field(description="activation set id")
    # hook_out comes first: hook's check then knows it, and names `hook` when it is wrong.
    hook_out: str | None = Field(
        None,
        description="train a transcoder: read `hook` (blocks.L.ln2.hook_normalized or "
        "blocks.L.hook_mlp_in) and predict this hook (blocks.L.hook_mlp_out) of the same set",
    )
    hook: str | None = Field(
        None, validate_default=True, description="hook to train on (default: the set's first)"
    )
    skip_connection: bool = Field(
        False, description="a transcoder's affine skip path from input to output (sparsify's)"
    )
    sources: list[Source] | None = Field(
        None, max_length=16,
        description="train a crosscoder over these sources (two or more), concatenated: the "
        "same hook of two models' sets (model diffing) or several hooks of one set; "
        "BatchTopK unless architecture says otherwise",
    )  # fmt: skip
    architecture: SerializeAsAny[ArchConfig] = Field(
        default_factory=TopKConfig, description="the architecture's name, or its config"
    )
    d_sae: int | None = Field(None, gt=0, description="latents (default: expansion_factor x d_in)")
    expansion_factor: int = Field(8, gt=0, description="d_sae / d_in when d_sae is not given")
    auxk_coefficient: float = Field(
        1 / 32, ge=0, description="AuxK loss coefficient (TopK family; 0 turns it off)"
    )
    dead_after_tokens: int | None = Field(
        None, gt=0, description="tokens without firing = dead (default: min(10M, half an epoch))"
    )
    init_decoder_norm: float = Field(1.0, gt=0, description="decoder rows' norm at init")
    geometric_median_init: bool = Field(
        True, description="start the decoder bias at the data's geometric median"
    )
    batch_size: int = Field(1024, gt=0, description="tokens per step")
    lr: float | None = Field(
        None, gt=0, description="learning rate (default: sparsify's 2e-4 / sqrt(d_sae / 2^14))"
    )
    lr_warmup_frac: float = Field(0.05, ge=0, lt=1, description="share of steps warming up")
    lr_decay_frac: float = Field(0.2, ge=0, le=1, description="share of steps decaying to 0")
    grad_clip: float | None = Field(1.0, gt=0, description="gradient norm clip (null: none)")
    optimizer_state: Literal["fp32", "bf16"] = Field(
        "fp32", description="dtype of Adam's moments (bf16: half the memory)"
    )
    epochs: float = Field(1.0, gt=0, description="passes over the training contexts")
    # Bounded by what torch.manual_seed takes: a larger one would fail inside the job.
    seed: int = Field(0, ge=0, le=2**63 - 1,
                      description="seeds the initialisation and the batch order")  # fmt: skip
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda if any)")
    name: str | None = Field(None, description="a display name for the SAE")
    checkpoint_every_tokens: int | None = Field(
        None, gt=0, description="save the training state this often (default: at the end)"
    )
    resume_from: str | None = Field(
        None, description="a training-state folder (default: this run's own)"
    )
    eval_ce_contexts: int = Field(
        8, ge=0, description="contexts for CE loss and KL with the SAE spliced in"
    )
    # Tokens left out of training, metrics and features (storage/exclusion.py).
    massive_norm_threshold: float = Field(
        DEFAULT_THRESHOLD, gt=1, allow_inf_nan=False,
        description="leave out tokens whose norm exceeds this x the median",
    )  # fmt: skip
    heldout_frac: float = Field(
        0.05, gt=0, lt=0.5, description="share of the set's contexts held out for evaluation"
    )
    # When named, training reads every context of `activation_set`.
    eval_set: Id | None = Field(
        None, description="activation set id to evaluate on (same model, hook, width)"
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_settings(cls, data):
        if not isinstance(data, dict):
            return data
        if data.get("sources") and "architecture" not in data:  # crosscoders: BatchTopK
            data = {**data, "architecture": "batchtopk"}
        return _architecture_from_flat(data)

    @field_validator("architecture", mode="before")
    @classmethod
    def _config_by_name(cls, v):
        if isinstance(v, ArchConfig):
            return v
        if isinstance(v, str):
            v = {"name": v}
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError("must be an architecture name or a config with its `name`")
        return config_class(v["name"]).model_validate(v)

    @field_validator("hook_out")
    @classmethod
    def _an_mlp_output(cls, hook_out: str | None) -> str | None:
        if hook_out is not None:
            point = _parsed(hook_out, "hook_out")
            if point.kind not in TRANSCODER_OUTPUTS:
                wanted = f"blocks.{point.layer}.hook_mlp_out"
                raise ValueError(f"a transcoder writes the MLP's output ({wanted}), "
                                 f"not {hook_out!r}")  # fmt: skip
        return hook_out

    @field_validator("hook")
    @classmethod
    def _a_hook_and_a_pair(cls, hook: str | None, info: ValidationInfo) -> str | None:
        hook_out = info.data.get("hook_out")
        if hook is None:
            if hook_out is not None:
                raise ValueError("a transcoder (hook_out) names its input hook too: set hook")
            return None
        _parsed(hook, "hook")
        if hook_out is not None:
            try:
                check_transcoder_hooks(hook, hook_out)
            except SpecError as e:
                raise ValueError(e.message) from None
        return hook

    @field_validator("sources")
    @classmethod
    def _two_sources_or_more(cls, sources, info: ValidationInfo):
        if sources is None:
            return None
        if len(sources) < 2:
            raise ValueError("a crosscoder reads two sources or more (one is an SAE: use hook)")
        if len(set(sources)) != len(sources):
            raise ValueError("a source is named twice")
        if info.data.get("hook") is not None or info.data.get("hook_out") is not None:
            raise ValueError("a crosscoder's hooks are its sources': leave hook and hook_out "
                             "unset")  # fmt: skip
        return sources

    @field_validator("eval_set")
    @classmethod
    def _not_a_crosscoders(cls, eval_set, info: ValidationInfo):
        if eval_set is not None and info.data.get("sources"):
            raise ValueError("a crosscoder is evaluated on its sets' held-out slice")
        return eval_set

    @field_validator("skip_connection")
    @classmethod
    def _skip_is_a_transcoders(cls, skip: bool, info: ValidationInfo) -> bool:
        if skip and info.data.get("hook_out") is None:
            raise ValueError("skip_connection is a transcoder's: set hook_out")
        return skip

    @model_validator(mode="after")
    def _fits(self) -> TrainSpec:
        if self.d_sae is not None:
            try:
                self.architecture.check_width(self.d_sae)
            except SpecError as e:  # pydantic names the location; the message suffices
                raise ValueError(e.message) from None
        if self.lr_warmup_frac + self.lr_decay_frac > 1:
            raise ValueError("lr_warmup_frac + lr_decay_frac must be <= 1")
        return self

    def sae_id(self) -> str:
        """The SAE this spec trains: its folder and catalog id."""
        data = {"set": self.activation_set, **self.id_data()}  # the set twice: ids stay
        return content_id("sae", data, SAE_ID_DIGITS)


Device = Literal["auto", "cpu", "cuda"]


class TrainJobSpec(Spec):
    """A sweep of TrainSpecs on one activation set, and where to run it. A bare TrainSpec
    is taken as a sweep of one. Its id is its SAEs' ids: the work is those SAEs."""

    ID_FIELDS = ("specs",)
    RUN_FIELDS = ("device", "resources")

    specs: list[TrainSpec] = Field(min_length=1, max_length=64, description="the SAEs to train")
    device: Device = Field("auto", description="cuda: a GPU or 422; cpu; auto: GPU if any")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources the training task needs"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_spec(cls, data: Any) -> Any:
        if isinstance(data, dict) and "specs" not in data and "activation_set" in data:
            return {"specs": [data]}
        return data

    def sae_ids(self) -> list[str]:
        return [s.sae_id() for s in self.specs]

    def content_id(self) -> str:
        return content_id("train", ",".join(sorted(self.sae_ids())))
