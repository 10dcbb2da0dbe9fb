"""Sizes of the toy-world model family and of each stage's training run.

``full-mid`` is the shipped family (``toyworld/assets/model``: text only in the UNet's mid
block); ``full`` is the first family, whose VAE and text encoder it reuses; ``tiny`` and
``tiny-mid`` are test sizes (seconds on a CPU). Component configs are plain
diffusers/transformers kwargs, so an exported directory loads through
``OneStepPipeline.from_pretrained``. The staged runs that train them are in ``lab/toyworld``.

Shapes (full): image (64,64,3) -> latent (4,16,16) (VAE f=4) -> H-space (128,4,4)
(UNet with 3 levels, mid block output). Text: context (77,128), pooled (128).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

# v-prediction keeps the one-step x0 = sqrt(ᾱ_T)·z - sqrt(1-ᾱ_T)·v well conditioned at
# t=999 (epsilon prediction would divide the error by sqrt(ᾱ_999) ≈ 0.07).
SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}


UNET_LAYOUTS = ("xattn", "sd", "mid")


@dataclass
class StageRun:
    """Optimisation settings of one stage."""

    steps: int
    batch_size: int
    lr: float
    log_every: int = 100


@dataclass
class FamilyConfig:
    """Everything the recipe needs: data sizes, component widths, stage runs."""

    name: str
    n_train: int
    n_retrieval: int
    n_eval_common: int
    n_eval_longtail: int
    vae_channels: tuple[int, ...]
    vae_groups: int
    text_hidden: int
    text_layers: int
    text_heads: int
    unet_channels: tuple[int, ...]
    unet_groups: int
    unet_heads: int
    adapter_heads: int
    image_encoder_width: int
    vae: StageRun
    text: StageRun
    teacher: StageRun
    student: StageRun
    adapter: StageRun
    n_distill: int = 40000
    teacher_steps: int = 25
    guidance: float = 3.0
    caption_dropout: float = 0.1
    kl_weight: float = 1e-6
    adv_weight: float = 0.05
    seed: int = 0
    unet_layout: str = "xattn"
    """Where text enters the UNet (``UNET_LAYOUTS``): ``xattn`` cross-attention in every
    down/up block (the first family; H-space has no leverage there); ``sd`` as
    SD 2.1: plain DownBlock2D/UpBlock2D at the lowest (H) resolution, cross-attention
    elsewhere and in the mid block; ``mid`` text only in the mid block, so H-space (the
    mid-block output) is the decoder's only path to the caption."""
    mid_layers: int = 1
    """Transformer layers of the mid block's cross-attention (``mid`` layout: 2)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---------------------------------------------------------------- components
    def vae_kwargs(self) -> dict[str, Any]:
        n = len(self.vae_channels)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "block_out_channels": list(self.vae_channels),
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "layers_per_block": 1,
            "norm_num_groups": self.vae_groups,
            "sample_size": 64,
            "scaling_factor": 1.0,
        }

    @property
    def latent_size(self) -> int:
        return 64 // 2 ** (len(self.vae_channels) - 1)

    def text_kwargs(self, vocab_size: int, bos: int, eos: int) -> dict[str, Any]:
        return {
            "vocab_size": vocab_size,
            "hidden_size": self.text_hidden,
            "intermediate_size": 4 * self.text_hidden,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "projection_dim": self.text_hidden,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        }

    def unet_kwargs(self) -> dict[str, Any]:
        n = len(self.unet_channels)
        if self.unet_layout not in UNET_LAYOUTS:
            raise ValueError(f"unknown unet_layout {self.unet_layout!r}; choose one of {UNET_LAYOUTS}")
        if self.unet_layout == "xattn":
            down, up = ["CrossAttnDownBlock2D"] * n, ["CrossAttnUpBlock2D"] * n
        elif self.unet_layout == "sd":
            down = ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"]
            up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1)
        else:
            down, up = ["DownBlock2D"] * n, ["UpBlock2D"] * n
        kw: dict[str, Any] = {
            "sample_size": self.latent_size,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": list(self.unet_channels),
            "down_block_types": down,
            "up_block_types": up,
            "attention_head_dim": self.unet_heads,
            "cross_attention_dim": self.text_hidden,
            "norm_num_groups": self.unet_groups,
        }
        if self.mid_layers != 1:
            # the mid block takes the last entry; blocks without attention ignore theirs
            kw["transformer_layers_per_block"] = [1] * (n - 1) + [self.mid_layers]
        return kw

    def adapter_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"channels": self.unet_channels[-1], "num_heads": self.adapter_heads, "ff_mult": 2}
        if self.extra.get("query_gate"):  # --set query_gate=1: the adapter's query gate
            kw["query_gate"] = True
        return kw


def full() -> FamilyConfig:
    """The first family (cross-attention in every block; ~8.5M parameters, 17 MB as fp16)."""
    return FamilyConfig(
        name="toyworld-full",
        n_train=60000,
        n_retrieval=10000,
        n_eval_common=200,
        n_eval_longtail=200,
        vae_channels=(32, 64, 64),
        vae_groups=16,
        text_hidden=128,
        text_layers=4,
        text_heads=4,
        unet_channels=(64, 96, 128),
        unet_groups=16,
        unet_heads=4,
        adapter_heads=4,
        image_encoder_width=64,
        vae=StageRun(steps=20000, batch_size=256, lr=1e-3),
        text=StageRun(steps=20000, batch_size=512, lr=5e-4),
        teacher=StageRun(steps=200000, batch_size=256, lr=3e-4),
        student=StageRun(steps=50000, batch_size=256, lr=5e-5),
        adapter=StageRun(steps=1500, batch_size=128, lr=5e-5),
        n_distill=40000,
    )


def tiny() -> FamilyConfig:
    """Test size: same code, seconds on a CPU."""
    return FamilyConfig(
        name="toyworld-tiny",
        n_train=96,
        n_retrieval=32,
        n_eval_common=4,
        n_eval_longtail=4,
        vae_channels=(8, 16, 16),
        vae_groups=4,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        unet_channels=(16, 16, 32),
        unet_groups=4,
        unet_heads=2,
        adapter_heads=2,
        image_encoder_width=8,
        vae=StageRun(steps=30, batch_size=16, lr=2e-3, log_every=5),
        text=StageRun(steps=30, batch_size=32, lr=2e-3, log_every=5),
        teacher=StageRun(steps=30, batch_size=16, lr=1e-3, log_every=5),
        student=StageRun(steps=20, batch_size=16, lr=1e-3, log_every=5),
        adapter=StageRun(steps=4, batch_size=4, lr=1e-3, log_every=1),
        n_distill=32,
        teacher_steps=4,
    )


def full_mid() -> FamilyConfig:
    """The shipped family: text only in the mid block (H-space carries the caption), the
    first family's VAE and text encoder; stage runs sized for one ~9-minute GPU call."""
    return replace(
        full(), name="toyworld-mid", unet_layout="mid", mid_layers=2,
        teacher=StageRun(steps=200000, batch_size=256, lr=3e-4),
        # the stages stop at their time limits (one GPU call); a short student run keeps
        # the EMA light (0.8) so it is not anchored to its teacher initialisation
        student=StageRun(steps=800, batch_size=256, lr=5e-5),
        adapter=StageRun(steps=100000, batch_size=256, lr=3e-4, log_every=50),
        n_distill=16000,
        extra={"n_adapter": 16000, "lr_decoder": 3e-5, "teacher_ema": 0.995,
               "student_init": "skewed", "leak_frac": 0.0,
               # the swap curriculum is off: with the decoder in the swapped rows' gradient it
               # costs the decoder more than retrieval gives back, and detached (swap_frac
               # 0.5 / 0.75, k = 1 / 4) the adapter ends 1.1-3.5 points under its control;
               # plain rows gave the best adapter (lab/archive/toyworld-models.md)
               "swap_frac": 0.0, "swap_detach": 1},
    )


def full_sd() -> FamilyConfig:
    """SD-2.1-like placement of cross-attention (none at the H resolution), for the probe."""
    return replace(full_mid(), name="toyworld-sd", unet_layout="sd", mid_layers=1)


def tiny_mid() -> FamilyConfig:
    return replace(tiny(), name="toyworld-tiny-mid", unet_layout="mid", mid_layers=2)


def get_family(name: str, **overrides: Any) -> FamilyConfig:
    """``full``, ``full-mid``, ``full-sd``, ``tiny`` or ``tiny-mid``, with optional field
    overrides; raises naming the choices."""
    makers = {"full": full, "full-mid": full_mid, "full-sd": full_sd, "tiny": tiny, "tiny-mid": tiny_mid}
    if name not in makers:
        raise ValueError(f"unknown family {name!r}; choose one of {sorted(makers)}")
    cfg = makers[name]()
    return replace(cfg, **overrides) if overrides else cfg
