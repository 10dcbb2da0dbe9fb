"""The training job's configuration: typed pydantic dataclasses, every field with its default.

A config file (YAML ``.yaml/.yml`` or TOML ``.toml``) mirrors ``TrainConfig``: top-level
keys are its fields, ``data``, ``retrieval``, ``loss`` and ``optim`` are nested tables.
Types and bounds live in the annotations (pydantic validates them at construction);
unknown keys fail loudly with their names; every bad value is named with the value given. ``retrieval: null`` (or ``control: true``) is
the control run: the same training with a null neighbour (λ = 0) in place of retrieval.
docs/training-config.md is the reference; the field docstrings below are its source.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

_CONFIG = ConfigDict(extra="forbid", strict=False)
dataclass = _pydantic_dataclass(config=_CONFIG)  # type: ignore[call-overload]
"""``@dataclass``: a pydantic dataclass (still a ``dataclasses`` dataclass: ``fields``,
``asdict`` and attribute docstrings work as before)."""

Pos = Annotated[int, Field(ge=1)]
NonNeg = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


@dataclass
class DataConfig:
    path: str = ""
    """Dataset: a folder (images + ``captions.jsonl`` with ``file``, ``caption`` [, ``id``]) or a
    ``.parquet`` file with ``caption`` [, ``id``] and ``image`` (encoded bytes) or ``latent``."""
    format: Literal["auto", "folder", "parquet"] = "auto"
    """How to read ``path``; ``auto`` picks parquet for a ``.parquet`` file, else folder."""
    max_items: Pos | None = None
    """Use only the first N pairs (None: all)."""
    rows: str | None = None
    """``loss.objective: regression`` only: a ``.pt`` file of precomputed rows
    (``training.regression.load_rows``: noise or noise seed, target latent, caption or
    context, neighbour H and λ) instead of ``path``; retrieval is then read from the file."""
    cache_latents: bool = True
    """Encode every pair's latent once at start-up (VAE posterior mean) and keep them in host
    memory; False: load and encode each batch's images at every step."""


@dataclass
class RetrievalConfig:
    source: Literal["dataset", "db"] = "dataset"
    """``dataset``: an in-memory index built from the training pairs themselves (pooled caption
    embeddings + H-features computed with the student at start-up; right for the toy world).
    ``db``: the ragturbo vector index + feature store (``retrieval`` package) at ``db_path`` or
    ``qdrant_url`` — the same index the service uses."""
    k: Annotated[int, Field(ge=1, le=8)] = 1
    """Neighbours per sample (1..8)."""
    path: str | None = None
    """``source: dataset``: index the pairs of this dataset (folder or parquet, like
    ``data.path``) instead of the training pairs, e.g. a retrieval split of real images."""
    min_score: Annotated[float, Field(ge=-1, le=1)] = 0.0
    """Neighbours with a cosine score below this get λ = 0 (as in the service)."""
    db_path: str | None = None
    """Qdrant Edge directory / feature store for ``source: db``."""
    qdrant_url: str | None = None
    """Qdrant server URL for ``source: db`` (feature store still under ``db_path``)."""
    qdrant_api_key: str | None = None
    """API key for ``qdrant_url``."""


@dataclass
class LossConfig:
    objective: Literal["ladd", "regression"] = "ladd"
    """``ladd``: adversarial + regression terms, adapter + up-block LoRA (below).
    ``regression``: smooth-L1 (``l1_beta``) of ẑ0 to paired teacher targets only, training the
    adapter and the whole decoder (up blocks, conv_norm_out, conv_out) at ``optim.lr`` /
    ``optim.decoder_lr``; no teacher UNet, discriminator or LoRA (``training.regression``)."""
    adv_weight: NonNegFloat = 1.0
    """Weight of the generator's hinge adversarial loss -D(fake)."""
    l1_weight: NonNegFloat = 2.5
    """α: weight of smooth-L1(ẑ0, z0) (the paper's α = 2.5)."""
    l1_beta: PosFloat = 1.0
    """Transition point of the smooth-L1 (torch ``beta``)."""
    lpips_weight: NonNegFloat = 1.0
    """β: weight of the latent perceptual loss (teacher-encoder features under augmentation)."""
    unpaired_regression: bool = False
    """Also apply smooth-L1 and the perceptual loss to rows without a ``noise_seed`` (real
    images). Off by default: their target is not a function of the student's noise, so the
    regression's minimiser is the mean image over the caption's possible images (the first toy
    run collapsed to near-black this way); such rows then train through the adversarial term
    only. Rows with a ``noise_seed`` (paired teacher samples) are always regressed."""
    disc_t_steps: NonNeg = 0
    """Timesteps s for re-noising before the discriminator: 0 = uniform over all training
    timesteps; N > 0 = uniform over the N steps of the teacher's sampler (trailing spacing)."""
    disc_head_channels: Pos = 64
    """Hidden width of each spectral-normalised discriminator head."""
    disc_stages: list[NonNeg] | None = None
    """Teacher encoder stages with a head (indices into down blocks, then mid = last);
    None: every down block and the mid block."""
    aug_translate: Fraction = 0.125
    """Max random translation (fraction of the latent size) of the perceptual-loss augmentation."""
    aug_cutout: Fraction = 0.25
    """Cutout square side (fraction of the latent size); 0 disables."""
    aug_flip: bool = True
    """Random horizontal flips in the perceptual-loss augmentation."""


@dataclass
class OptimConfig:
    lr: PosFloat = 1e-5
    """Generator (adapter + LoRA) learning rate, constant after warm-up (paper: 1e-5)."""
    decoder_lr: PosFloat = 3e-5
    """``loss.objective: regression``: learning rate of the decoder's weights (``lr`` is the adapter's)."""
    disc_lr: PosFloat = 1e-5
    """Discriminator heads' learning rate."""
    warmup_steps: NonNeg = 0
    """Linear warm-up from 0 over this many steps, then ``schedule``."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant, or cosine decay to ``lr_floor``·lr over the run (steps, or
    ``time_limit_s`` when that ends the run first)."""
    lr_floor: Fraction = 0.0
    """Final LR of the cosine schedule, as a fraction of the initial one."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    """AdamW betas (generator and discriminator)."""
    weight_decay: NonNegFloat = 0.01
    """AdamW weight decay."""
    grad_clip: PosFloat | None = 1.0
    """Clip each model's gradient norm (None: no clipping)."""


@dataclass
class TrainConfig:
    student: str = ""
    """Student model directory (OneStepPipeline layout: unet/ vae/ text_encoder/ tokenizer/
    scheduler/ [hadapter/]). Its hadapter/ (if any) initialises the adapter."""
    teacher_unet: str = ""
    """Teacher UNet: a diffusers ``UNet2DConditionModel`` folder (config.json + weights), sharing the
    student's text encoder, VAE and scheduler."""
    output_dir: str = "runs/adapter"
    """Where checkpoints, ``log.csv``, ``config.json`` and ``result.json`` go."""
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig | None = field(default_factory=RetrievalConfig)
    """Retrieval during training; None (``retrieval: null``) = control run."""
    control: bool = False
    """Control run: replace every neighbour by a null one (λ = 0); same as ``retrieval: null``."""
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: Pos = 1000
    """Total optimiser steps."""
    batch_size: Pos = 8
    """Global batch size (split evenly across torchrun processes)."""
    seed: int = 0
    """Seeds LoRA init, data order, noise, timesteps and augmentations."""
    lora_rank: NonNeg = 16
    """Rank of the LoRA on the student's up blocks (0 disables the LoRA)."""
    lora_alpha: PosFloat | None = None
    """LoRA alpha (None: equal to the rank)."""
    lora_targets: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out",
                                 "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]
    )
    """Module-name suffixes inside ``unet.up_blocks`` that get a LoRA."""
    device: str = "auto"
    """``auto`` (cuda:LOCAL_RANK if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    mixed_precision: Literal["no", "bf16"] = "bf16"
    """bf16 autocast on GPU (ignored on CPU)."""
    gradient_checkpointing: bool = False
    """Recompute UNet blocks in backward (student decoder, teacher encoder) to save memory."""
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    """EMA of the trained generator weights (e.g. 0.999); export uses the EMA when present."""
    time_limit_s: PosFloat | None = None
    """``loss.objective: regression``: stop after this many seconds of training (checkpointed
    and exported like a finished run); None: run all ``steps``."""
    log_every: Pos = 10
    """Write a CSV (and TensorBoard, if installed) row every N steps."""
    ckpt_every: Pos = 500
    """Checkpoint every N steps (and at the end); ``latest.pt`` is replaced atomically."""
    keep_checkpoints: NonNeg = 2
    """How many step-numbered checkpoints to keep besides ``latest.pt``."""
    resume: bool = True
    """Resume from ``output_dir/latest.pt`` if it exists (exact: RNG states and data order)."""
    progress: bool = True
    """tqdm progress bar on rank 0."""

    # ------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        if self.control:
            self.retrieval = None

    def validate(self) -> TrainConfig:
        """Raise ValueError naming every missing path and every cross-field conflict
        (single-field types and bounds were checked by pydantic at construction)."""
        errs: list[str] = []
        if not self.student:
            errs.append("student (model dir) is required")
        regression = self.loss.objective == "regression"
        if not self.teacher_unet and not regression:
            errs.append("teacher_unet (UNet dir) is required")
        if not (self.data.path or (regression and self.data.rows)):
            errs.append("data.path is required" + (" (or data.rows)" if regression else ""))
        if self.data.rows and not regression:
            errs.append("data.rows needs loss.objective 'regression'")
        if self.retrieval is not None:
            r = self.retrieval
            if r.source == "db" and not (r.db_path or r.qdrant_url):
                errs.append("retrieval.source 'db' needs retrieval.db_path or retrieval.qdrant_url")
        if errs:
            raise ValueError("invalid training config: " + "; ".join(errs))
        return self

    @property
    def is_control(self) -> bool:
        return self.retrieval is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(f"unknown config key(s) in {where}: {unknown}; valid: {sorted(names)}")
    kw: dict[str, Any] = {}
    nested = {"data": DataConfig, "retrieval": RetrievalConfig, "loss": LossConfig,
              "optim": OptimConfig}
    for k, v in raw.items():
        if cls is TrainConfig and k in nested:
            if v is None and k == "retrieval":
                kw[k] = None
            elif isinstance(v, dict):
                kw[k] = _build(nested[k], v, f"{where}.{k}")
            else:
                raise ValueError(f"{where}.{k} must be a table/mapping, got {v!r}")
        elif k == "betas" and isinstance(v, list):
            kw[k] = tuple(v)
        else:
            kw[k] = v
    try:
        return cls(**kw)
    except ValidationError as e:
        raise ValueError(f"invalid training config: {_explain(e, where)}") from None


def _explain(err: ValidationError, where: str) -> str:
    """pydantic's errors as ``key: message (got value)``, one per bad value, '; '-joined."""
    parts = []
    for d in err.errors():
        loc = ".".join(str(x) for x in d["loc"])
        key = (f"{where}.{loc}" if loc else where).removeprefix("config.")
        parts.append(f"{key}: {d['msg']} (got {d.get('input')!r})")
    return "; ".join(parts)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a plain mapping (as read from YAML/TOML/JSON)."""
    return _build(TrainConfig, dict(raw), "config").validate()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML/TOML/JSON config; relative paths in it are resolved against its folder."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text) or {}
    elif p.suffix == ".toml":
        raw = tomllib.loads(text)
    elif p.suffix == ".json":
        raw = json.loads(text)
    else:
        raise ValueError(f"config {p} must end in .yaml, .yml, .toml or .json")
    if not isinstance(raw, dict):
        raise TypeError(f"config {p} must be a mapping at top level, got {type(raw).__name__}")
    raw.update(overrides or {})
    base = p.resolve().parent

    def rel(v: str | None) -> str | None:
        if not v:
            return v
        q = Path(v).expanduser()
        return str(q if q.is_absolute() else base / q)

    for key in ("student", "teacher_unet", "output_dir"):
        if key in raw:
            raw[key] = rel(raw[key])
    for table, key in (("data", "path"), ("data", "rows"), ("retrieval", "db_path"), ("retrieval", "path")):
        if isinstance(raw.get(table), dict) and raw[table].get(key):
            raw[table][key] = rel(raw[table][key])
    return config_from_dict(raw)
