"""The SAE interface, its config, and the checkpoint format every architecture shares.

A checkpoint is a folder: `cfg.json` + `sae.safetensors` with W_enc [d_in, d_sae],
b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] (+ `threshold` for JumpReLU), in the
model's own activation units: any input normalisation is folded into the weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from saefeat.errors import NotFoundError, SpecError
from saefeat.shapes import check_active_count

FORMAT_VERSION = 1


# The TopK family's active latents per token; its bound by d_sae is check_active_count.
ActiveCount = Annotated[int, Field(gt=0, description="active latents per token")]


class ArchConfig(BaseModel):
    """An architecture's own settings: each module subclasses this once, with its
    defaults and validation; `name` is what `architecture` holds in cfg.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str

    def check_width(self, d_sae: int) -> None:
        """Refuse settings that cannot train d_sae latents (the TopK family's k)."""
        check_active_count(getattr(self, "k", None), d_sae)

    def to_checkpoint(self) -> tuple[int | None, dict]:
        """(k, extra) as cfg.json holds them: k apart, the other settings in `extra`."""
        return getattr(self, "k", None), self.model_dump(mode="json", exclude={"name", "k"})

    @classmethod
    def from_checkpoint(cls, k: int | None, extra: dict) -> ArchConfig:
        """The settings a cfg.json holds; a key it lacks takes the default, as it did."""
        fields = {n: extra[n] for n in cls.model_fields if n in extra and n != "name"}
        if "k" in cls.model_fields and k is not None:
            fields["k"] = k
        try:
            return cls(**fields)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SpecError(f"{where} {first['msg']}", field=where or "architecture") from None


class _Entry(NamedTuple):
    cls: type[SparseAutoencoder]
    config: type[ArchConfig]


_REGISTRY: dict[str, _Entry] = {}


def register(config: type[ArchConfig]):
    """Class decorator: registers the SAE class with its config under the config's name."""
    name = config.model_fields["name"].default

    def wrap(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        cls.architecture = name
        _REGISTRY[name] = _Entry(cls, config)
        return cls

    return wrap


def _entry(architecture: str) -> _Entry:
    if architecture not in _REGISTRY:
        raise SpecError(
            f"unknown architecture {architecture!r}; known: {architectures()}",
            field="architecture",
        )
    return _REGISTRY[architecture]


def sae_class(architecture: str) -> type[SparseAutoencoder]:
    """The class registered under `architecture` (a checkpoint's cfg field)."""
    return _entry(architecture).cls


def config_class(architecture: str) -> type[ArchConfig]:
    """The settings class registered under `architecture`."""
    return _entry(architecture).config


def architectures() -> list[str]:
    return sorted(_REGISTRY)


def arch_settings() -> set[str]:
    """Every setting name some architecture's config declares."""
    return {n for e in _REGISTRY.values() for n in e.config.model_fields if n != "name"}


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = 32
    model: str | None = None
    hook: str | None = None
    activation_set: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # architecture-specific settings

    def arch(self) -> ArchConfig:
        """This checkpoint's architecture settings (raises for an unknown architecture)."""
        return config_class(self.architecture).from_checkpoint(self.k, self.extra)

    def validate(self) -> None:
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SpecError(f"d_in and d_sae must be > 0, got {self.d_in}, {self.d_sae}")
        self.arch()  # the settings parse
        # Only k binds a stored SAE; a setting like JumpReLU's target L0 binds training.
        check_active_count(self.k, self.d_sae)


class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # [B, d_in]
    vals: torch.Tensor  # [B, k] latent activations
    idx: torch.Tensor  # [B, k] latent ids


class TrainStep(NamedTuple):
    """What one training forward gives the trainer."""

    out: SAEOutput
    loss: torch.Tensor  # scalar to minimise (AuxK is added by the trainer)
    parts: dict[str, torch.Tensor]  # named loss terms, for logging


def dense_to_sparse(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [B, d_sae] activations -> the padded (vals, idx) layout of the kernels:
    k_max = the most active latents in any row; padding is zeros at valid latents."""
    k_max = max(1, int((acts != 0).sum(1).max())) if acts.shape[0] else 1
    vals, idx = acts.topk(min(k_max, acts.shape[1]), dim=1, sorted=False)
    return vals, idx


def dense_layout(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [B, d_sae] activations as (vals, idx) with idx every latent (a view, no copy):
    the training loop needs which latents fired, not a compact layout."""
    idx = torch.arange(acts.shape[1], device=acts.device).expand(acts.shape[0], -1)
    return acts, idx


def fvu_loss(x: torch.Tensor, x_hat: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    return (x_hat.float() - x).pow(2).sum() / variance


def dense_train_step(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    acts: torch.Tensor,
    variance: torch.Tensor,
    penalty: torch.Tensor,
    parts: dict[str, torch.Tensor],
) -> TrainStep:
    """The training step of an SAE whose latents come out dense (ReLU, JumpReLU): decode
    every latent (most fire early in training), FVU + the architecture's sparsity
    `penalty`, and the dense (vals, idx) layout for the trainer; `parts` are logged."""
    x_hat = acts @ sae.W_dec.to(acts.dtype) + sae.b_dec
    fvu = fvu_loss(x, x_hat, variance)
    vals, idx = dense_layout(acts.detach())
    return TrainStep(SAEOutput(x_hat, vals, idx), fvu + penalty, {"fvu": fvu, **parts})


class SparseAutoencoder(nn.Module):
    """Subclasses implement encode(x) -> (vals, idx); the trainer calls training_loss and
    after_step, so every architecture trains through the same loop."""

    architecture = "base"
    # Decoder rows kept at unit norm by the optimizer (not for ReLU+L1, whose penalty is
    # weighted by the row norms and so needs them free).
    unit_norm_decoder: ClassVar[bool] = True
    # AuxK applies to the TopK family, whose dead latents get no gradient otherwise.
    uses_auxk: ClassVar[bool] = False

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.settings = cfg.arch()  # typed view of cfg.k + cfg.extra
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, decoder_norm: float = 1.0) -> None:
        """Decoder rows random at `decoder_norm`, encoder their transpose (sparsify/OpenAI)."""
        w = torch.randn_like(self.W_dec)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True) * decoder_norm)
        self.W_enc.copy_(self.W_dec.t())

    # Subclasses implement encode(x) -> (vals, idx); decode is shared.
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        from saefeat.kernels import sparse_decode

        return sparse_decode(idx, vals, self.W_dec, self.b_dec)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        vals, idx = self.encode(x)
        return SAEOutput(self.decode(vals, idx), vals, idx)

    def training_loss(self, x: torch.Tensor, variance: torch.Tensor) -> TrainStep:
        """Forward in training mode and the loss: FVU unless the architecture adds terms.
        `variance` = sum((x - mean x)^2) of the batch, the FVU denominator."""
        out = self(x)
        fvu = fvu_loss(x, out.x_hat, variance)
        return TrainStep(out, fvu, {"fvu": fvu})

    def after_step(self, out: SAEOutput) -> None:
        """Called after each optimizer step with that step's output (threshold EMAs)."""

    def dense_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d_sae] latent activations (for analysis on small batches)."""
        vals, idx = self.encode(x)
        out = torch.zeros(x.shape[0], self.cfg.d_sae, dtype=vals.dtype, device=x.device)
        return out.scatter_(1, idx, vals)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on x * scale act on raw x with identical latents."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # ---- checkpoints ----------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}

    def save(self, path: Path, *, overwrite: bool = False) -> Path:
        """Write the checkpoint folder atomically (temp folder, then rename)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise SpecError(f"{path} exists; refusing to overwrite a checkpoint", field="out")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self.tensors(), str(tmp / "sae.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path


def read_config(path: Path) -> SAEConfig:
    path = Path(path)
    cfg_file = path / "cfg.json"
    if not cfg_file.is_file():
        raise NotFoundError(f"no SAE checkpoint at {path} (cfg.json missing)")
    raw = json.loads(cfg_file.read_text())
    version = raw.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise SpecError(
            f"{path} was written by a newer saefeat (format {version} > {FORMAT_VERSION})",
            field="checkpoint",
        )
    known = set(SAEConfig.__dataclass_fields__)
    return SAEConfig(**{k: v for k, v in raw.items() if k in known})


def load_sae(path: Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    cfg = read_config(path)
    cfg.validate()
    sae = sae_class(cfg.architecture)(cfg)
    sae.load_state_dict(load_file(str(Path(path) / "sae.safetensors")))
    # Inference mode: BatchTopK encodes with its stored threshold there.
    return sae.to(device).eval()
