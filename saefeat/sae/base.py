"""The SAE interface, its config, and the checkpoint format every architecture shares.

A checkpoint is a folder: `cfg.json` + `sae.safetensors` with W_enc [d_in, d_sae],
b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out] (+ `threshold` for JumpReLU), in the
model's own activation units: any input normalisation is folded into the weights.

An SAE reconstructs its hook (d_out = d_in) and encodes x - b_dec. A transcoder (cfg
`hook_out` set) reads one hook and predicts another, the MLP's output from its input
(sparsify's `transcode`): its encoder reads x as it is (b_dec is the output's bias), and
with `skip_connection` an affine path W_skip [d_out, d_in] adds x @ W_skip.T to the output.
A crosscoder (cfg `sources`, two or more: saefeat/sae/crosscoder.py) is an SAE over its
sources' activations concatenated. Every architecture is each of these: the difference
lives here, in `encoder_input` and `skip`, and in what the trainer feeds it.
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
    hook_out: str | None = None  # a transcoder's output hook (None: an SAE of `hook`)
    d_out: int | None = None  # a transcoder's output width (None: d_in)
    skip_connection: bool = False  # a transcoder's affine skip path, W_skip
    # A crosscoder's sources in the order they are concatenated:
    # [{"activation_set", "hook", "model", "width"}, ...] (None: one source, `hook`).
    sources: list[dict] | None = None

    @property
    def is_crosscoder(self) -> bool:
        return bool(self.sources) and len(self.sources) >= 2

    @property
    def source_widths(self) -> list[int]:
        return [int(s["width"]) for s in self.sources] if self.sources else [self.d_in]

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None

    @property
    def out_dim(self) -> int:
        """Width of what the decoder writes."""
        return self.d_out or self.d_in

    @property
    def write_hook(self) -> str | None:
        """Where the decoder's rows live in the model: steering and patching add them there."""
        return self.hook_out or self.hook

    def arch(self) -> ArchConfig:
        """This checkpoint's architecture settings (raises for an unknown architecture)."""
        return config_class(self.architecture).from_checkpoint(self.k, self.extra)

    def validate(self) -> None:
        if self.d_in <= 0 or self.d_sae <= 0 or self.out_dim <= 0:
            raise SpecError(f"d_in, d_out and d_sae must be > 0, got {self.d_in}, "
                            f"{self.out_dim}, {self.d_sae}")  # fmt: skip
        if (self.skip_connection or self.d_out is not None) and not self.is_transcoder:
            raise SpecError("skip_connection and d_out are a transcoder's: set hook_out",
                            field="hook_out")  # fmt: skip
        if self.sources is not None:
            if self.is_transcoder or len(self.sources) < 2:
                raise SpecError("a crosscoder reads two sources or more, and is no transcoder",
                                field="sources")  # fmt: skip
            if sum(self.source_widths) != self.d_in:
                raise SpecError(f"the sources' widths {self.source_widths} do not add up to "
                                f"d_in {self.d_in}", field="sources")  # fmt: skip
        self.arch()  # the settings parse
        # Only k binds a stored SAE; a setting like JumpReLU's target L0 binds training.
        check_active_count(self.k, self.d_sae)


class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # [B, d_out]: the reconstruction (a transcoder's prediction)
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


def fvu_loss(y: torch.Tensor, y_hat: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    return (y_hat.float() - y).pow(2).sum() / variance


def dense_train_step(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    y: torch.Tensor,
    acts: torch.Tensor,
    variance: torch.Tensor,
    penalty: torch.Tensor,
    parts: dict[str, torch.Tensor],
) -> TrainStep:
    """The training step of an SAE whose latents come out dense (ReLU, JumpReLU): decode
    every latent (most fire early in training), FVU of the target `y` + the
    architecture's sparsity `penalty`, and the dense (vals, idx) layout for the trainer;
    `parts` are logged."""
    x_hat = sae.skip(x, acts @ sae.W_dec.to(acts.dtype) + sae.b_dec)
    fvu = fvu_loss(y, x_hat, variance)
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
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.out_dim
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        # Zero at the start (sparsify's): the latents learn what the affine path cannot.
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in)) if cfg.skip_connection else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, decoder_norm: float = 1.0) -> None:
        """Decoder rows random at `decoder_norm`, encoder their transpose (sparsify/OpenAI);
        a transcoder whose widths differ gets an encoder of its own, columns at the norm."""
        w = torch.randn_like(self.W_dec)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True) * decoder_norm)
        if self.W_enc.shape == self.W_dec.t().shape:
            self.W_enc.copy_(self.W_dec.t())
        else:
            e = torch.randn_like(self.W_enc)
            self.W_enc.copy_(e / e.norm(dim=0, keepdim=True) * decoder_norm)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder multiplies: an SAE's input centred on b_dec (the same as
        folding -b_dec @ W_enc into b_enc, but keeps b_dec the data's centre); a
        transcoder's input as it is, since its b_dec is the output's."""
        return x if self.cfg.is_transcoder else x - self.b_dec

    # Subclasses implement encode(x) -> (vals, idx); decode is shared.
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The latents' part of the output (a transcoder's skip path is `skip`'s)."""
        from saefeat.kernels import sparse_decode

        return sparse_decode(idx, vals, self.W_dec, self.b_dec)

    def skip(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """The output: the decoded latents, plus x @ W_skip.T for a transcoder with one."""
        if self.W_skip is None:
            return decoded
        return decoded + x.to(self.W_skip.dtype) @ self.W_skip.t()

    def forward(self, x: torch.Tensor) -> SAEOutput:
        vals, idx = self.encode(x)
        return SAEOutput(self.skip(x, self.decode(vals, idx)), vals, idx)

    def training_loss(
        self, x: torch.Tensor, variance: torch.Tensor, y: torch.Tensor | None = None
    ) -> TrainStep:
        """Forward in training mode and the loss: FVU of the target `y` (a transcoder's
        output; an SAE's is x) unless the architecture adds terms. `variance` =
        sum((y - mean y)^2) of the batch, the FVU denominator."""
        out = self(x)
        fvu = fvu_loss(x if y is None else y, out.x_hat, variance)
        return TrainStep(out, fvu, {"fvu": fvu})

    def after_step(self, out: SAEOutput) -> None:
        """Called after each optimizer step with that step's output (threshold EMAs)."""

    def dense_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d_sae] latent activations (for analysis on small batches)."""
        vals, idx = self.encode(x)
        out = torch.zeros(x.shape[0], self.cfg.d_sae, dtype=vals.dtype, device=x.device)
        return out.scatter_(1, idx, vals)

    @torch.no_grad()
    def fold_input_scale(
        self, scale: float | torch.Tensor, out_scale: float | torch.Tensor | None = None
    ) -> None:
        """Make an SAE trained on x * scale act on raw x with identical latents; a
        transcoder trained to predict y * out_scale then predicts raw y. A scale is a
        number, or one per input (output) dimension: a crosscoder scales each source."""
        out_scale = scale if out_scale is None else out_scale
        s_in = torch.as_tensor(scale, dtype=self.W_enc.dtype, device=self.W_enc.device)
        s_out = torch.as_tensor(out_scale, dtype=self.W_dec.dtype, device=self.W_dec.device)
        self.W_enc.mul_(s_in.reshape(-1, 1) if s_in.ndim else s_in)
        self.W_dec.div_(s_out)
        self.b_dec.div_(s_out)
        if self.W_skip is not None:
            self.W_skip.mul_(s_in / s_out.reshape(-1, 1) if s_out.ndim else s_in / s_out)

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
