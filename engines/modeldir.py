"""Model directory: validation, loading of components, and the model fingerprint.

Layout (diffusers): ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``, plus ``hadapter/`` (config.json + safetensors) and an optional
``ragturbo.json`` ({"name", "student_timestep", "resolution"}). Loading reads local
files only (``local_files_only=True``); anything missing fails with the path.

``ModelDir.open(path)`` reads a directory once: the layout is validated, the configs and
the scheduler config are parsed, and the tokenizer and the fingerprint are made on first
use and kept. The pipeline, the graph backends and the shape spec take a ``ModelDir``
(or a path, which they open), so a backend start validates once, builds one tokenizer
and hashes the weights once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

REQUIRED: dict[str, tuple[str, ...]] = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": (),
    "scheduler": ("scheduler_config.json",),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Components whose weights decide the retrieved H-features and the text embeddings.
FEATURE_COMPONENTS = ("text_encoder", "tokenizer", "unet", "vae")


class ModelDirError(ValueError):
    """The model directory is missing or malformed; the message names the path."""


@dataclass
class ModelInfo:
    path: Path
    name: str
    student_timestep: int
    resolution: int | None
    has_hadapter: bool
    extra: dict[str, Any] = field(default_factory=dict)


def validate_model_dir(path: str | Path) -> ModelInfo:
    """Check the layout; raise ModelDirError naming every missing path."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelDirError(f"model directory {root} does not exist or is not a directory")
    missing: list[str] = []
    for comp, files in REQUIRED.items():
        d = root / comp
        if not d.is_dir():
            missing.append(str(d) + "/")
            continue
        missing += [str(d / f) for f in files if not (d / f).is_file()]
        if comp == "tokenizer" and not (d / "tokenizer.json").is_file():
            missing += [str(d / f) for f in ("vocab.json", "merges.txt") if not (d / f).is_file()]
        if comp in ("unet", "vae", "text_encoder") and not any(
            p.suffix in WEIGHT_SUFFIXES for p in d.iterdir()
        ):
            missing.append(f"{d}/*.safetensors (weights)")
    had = root / "hadapter"
    has_hadapter = had.is_dir()
    if has_hadapter:
        if not (had / "config.json").is_file():
            missing.append(str(had / "config.json"))
        if not any(p.suffix in WEIGHT_SUFFIXES for p in had.iterdir()):
            missing.append(f"{had}/*.safetensors (weights)")
    if missing:
        raise ModelDirError(f"model directory {root} is incomplete; missing: " + ", ".join(missing))
    meta: dict[str, Any] = {}
    meta_path = root / "ragturbo.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelDirError(f"{meta_path} is not valid JSON: {e}") from e
    for comp in ("unet", "vae", "text_encoder"):
        cfg = root / comp / "config.json"
        try:
            json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise ModelDirError(f"{cfg} is not valid JSON: {e}") from e
    return ModelInfo(
        path=root,
        name=str(meta.get("name", root.name)),
        student_timestep=int(meta.get("student_timestep", 999)),
        resolution=meta.get("resolution"),
        has_hadapter=has_hadapter,
        extra=meta,
    )


class ModelDir:
    """One model directory, validated once; what every loader reads from it.

    ``info`` (name, student timestep, resolution, hadapter), ``configs`` (the unet, vae
    and text_encoder config.json), ``scheduler_config``; ``tokenizer`` and ``fingerprint``
    are built on first use and kept.
    """

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self.configs: dict[str, dict[str, Any]] = {
            c: json.loads((info.path / c / "config.json").read_text()) for c in ("unet", "vae", "text_encoder")
        }
        self.scheduler_config: dict[str, Any] = json.loads(
            (info.path / "scheduler" / "scheduler_config.json").read_text()
        )

    @classmethod
    def open(cls, path: str | Path | ModelDir) -> ModelDir:
        """A ``ModelDir`` for ``path`` (validated; ModelDirError names what is missing), or ``path`` itself."""
        return path if isinstance(path, ModelDir) else cls(validate_model_dir(path))

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def name(self) -> str:
        return self.info.name

    @cached_property
    def tokenizer(self) -> Any:
        """The CLIP tokenizer of ``tokenizer/`` (one instance per directory)."""
        from transformers import CLIPTokenizer

        try:
            return CLIPTokenizer.from_pretrained(str(self.path / "tokenizer"), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ModelDirError(f"could not load the tokenizer of {self.path}: {e}") from e

    @cached_property
    def fingerprint(self) -> str:
        """``fingerprint(path)``, computed once."""
        return fingerprint(self.path)

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"


def file_sha256(p: Path) -> str:
    """sha256 of a file's bytes, hex (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: str | Path, components: tuple[str, ...] = FEATURE_COMPONENTS) -> str:
    """sha256 over the files of ``components`` (names and contents), 16 hex chars.

    Digests of large files are cached in ``<model>/.fingerprint-cache.json`` keyed by
    (size, mtime) when the directory is writable, so a 3 GB UNet is hashed once.
    """
    root = Path(path)
    cache_path = root / ".fingerprint-cache.json"
    cache: dict[str, Any] = {}
    if cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    h = hashlib.sha256()
    dirty = False
    for comp in components:
        for f in sorted((root / comp).rglob("*")):
            if not f.is_file():
                continue
            rel = str(f.relative_to(root))
            st = f.stat()
            key = f"{st.st_size}:{st.st_mtime_ns}"
            ent = cache.get(rel)
            if ent and ent.get("key") == key:
                dig = ent["sha256"]
            else:
                dig = file_sha256(f)
                cache[rel] = {"key": key, "sha256": dig}
                dirty = True
            h.update(rel.encode() + b"\0" + dig.encode() + b"\n")
    if dirty:
        try:
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_path)
        except OSError:
            log.debug("fingerprint cache not writable at %s", cache_path)
    return h.hexdigest()[:16]


def load_components(
    path: str | Path | ModelDir, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Load tokenizer, text encoder, UNet, VAE, H-adapter and scheduler config from disk."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from engines.hadapter import HAdapter

    md = ModelDir.open(path)
    info, root = md.info, md.path
    kw = {"local_files_only": True}
    tokenizer = md.tokenizer
    try:
        text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), dtype=dtype, **kw)
        unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), torch_dtype=dtype, **kw)
        vae = AutoencoderKL.from_pretrained(str(root / "vae"), torch_dtype=dtype, **kw)
        if info.has_hadapter:
            hadapter = HAdapter.from_pretrained(str(root / "hadapter"), torch_dtype=dtype, **kw)
        else:
            ch = int(unet.config.block_out_channels[-1])
            heads = max(1, ch // 64)
            log.warning(
                "no hadapter/ in %s: using a zero-initialised adapter (identity) of width %d",
                root,
                ch,
            )
            hadapter = HAdapter(channels=ch, num_heads=heads).to(dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelDirError(f"could not load model directory {root}: {e}") from e
    return {
        "info": info,
        "tokenizer": tokenizer,
        "text_encoder": text_encoder.to(device).eval(),
        "unet": unet.to(device).eval(),
        "vae": vae.to(device).eval(),
        "hadapter": hadapter.to(device).eval(),
        "scheduler_config": md.scheduler_config,
    }
