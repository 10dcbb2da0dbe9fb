"""The service's one typed settings class (docs/service.md, Settings).

Read from the environment with the prefix ``RAGTURBO_`` (e.g. ``RAGTURBO_MAX_BATCH=16``).
Bounds live in the types, choices are ``Literal``; cross-field checks name the values.
Nothing is read at import time: build ``Settings()`` at startup; an invalid value raises
``pydantic.ValidationError`` whose message names the field and the offending value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engines.backends.registry import AUTO, BACKENDS, capabilities
from engines.modes import DEFAULT_MIN_SCORE
from engines.shapes import bucket_for
from retrieval.redact import redact_url, url_secrets


def _default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


class Settings(BaseSettings):
    """Everything an operator can set. Defaults give the embedded setup on this machine."""

    model_config = SettingsConfigDict(
        env_prefix="RAGTURBO_", extra="ignore", validate_default=True, frozen=True
    )

    # ------------------------------------------------------------------ model
    model_dir: Path | None = None
    """Model directory (diffusers layout + hadapter/). None: the shipped toy model, or a
    random tiny model written under ``db_path`` (engines.default_model)."""
    backend: str = "auto"
    """Runtime backend, chosen once: ``auto`` or a name of the registry
    (``engines/backends/registry.py``: fast, torch, torch-opt, onnxruntime, tensorrt). If it cannot start the service stays not ready.
    ``auto``: ``fast`` on a CUDA device (the serving engine: retrieval search inside one
    CUDA graph per batch bucket), ``torch`` on CPU. ``torch-opt`` is the torch backend's
    optimised mode (CUDA graphs for the UNet and VAE only; the search runs on the host)."""
    onnx_dir: Path | None = None
    """Directory written by ``ragturbo export onnx`` (required by backend=onnxruntime)."""
    engine_dir: Path | None = None
    """Directory of TensorRT plans written by ``ragturbo build trt`` (required by
    backend=tensorrt)."""
    device: str = ""
    """torch device, e.g. ``cpu`` or ``cuda:0``. Empty: cuda:0 if available else cpu."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Compute dtype of the model weights. ``auto``: float16 on CUDA, float32 on CPU."""
    vae_decoder: Literal["full", "small"] = "full"
    """VAE decoder: ``full`` (the model's, default) or ``small`` (the distilled decoder in
    ``<model_dir>/vae_small``: fewer channels, faster, images differ; its PSNR and checker
    fidelity against the full decoder are in docs/perf.md). Backends torch, torch-opt and
    fast run it; onnxruntime and tensorrt refuse it. The choice is logged and shows in the
    model name ("+vae_small") of /readyz, responses and ``ragturbo_build_info``."""

    # ------------------------------------------------------------------ retrieval
    db_path: Path = Path("data")
    """Data directory: the embedded Qdrant Edge index and H-feature store."""
    qdrant_url: str | None = None
    """Qdrant server URL for production; None uses the embedded Qdrant Edge under db_path."""
    qdrant_api_key: SecretStr | None = None
    """API key of the Qdrant server (never logged)."""
    min_score: Annotated[float, Field(ge=-1.0, le=1.0)] = DEFAULT_MIN_SCORE
    """Neighbours whose cosine score is below this get λ=0 (contribute nothing) and a
    request with no neighbour above it reports ``retrieval_status: weak``. The default was
    chosen on the shipped toy model's scores (docs/retrieval.md, MIN_SCORE)."""
    device_index_max_pairs: Annotated[int, Field(ge=0, le=100_000_000)] = 2_000_000
    """backend=fast: databases up to this many pairs are copied to the device and searched
    exactly inside the graph; larger ones (or a Qdrant server) are searched in Qdrant."""
    feature_dtype: Literal["float16", "float8"] = "float16"
    """backend=fast: storage of the device copy's H-features (float8: half the memory,
    per-row scaled e4m3; its error is in docs/perf.md)."""
    index_refresh_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = 30.0
    """backend=fast: how often pairs ingested meanwhile are copied to the device (0: never)."""
    synthetic_pairs: Annotated[int, Field(ge=0, le=100_000_000)] = 0
    """Benchmarks only (backend=fast): serve N random pairs made on the device instead of
    the database; the log and /readyz say "synthetic"."""
    ingest_dir: Path | None = None
    """Directory ``POST /admin/ingest`` reads captions files and images from (nothing
    outside it). None: the route does not exist. Needs api_keys."""
    compile_cache_dir: Path | None = None
    """Persistent torch.compile cache (TORCHINDUCTOR_CACHE_DIR); on a volume, a restart
    recompiles nothing (Helm: ``compileCache``)."""

    # ------------------------------------------------------------------ batching
    max_batch: Annotated[int, Field(ge=1, le=256)] = 8
    """Most images in one pipeline call. 1 turns batching off."""
    max_wait_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = 0.0
    """Extra time an idle model worker waits for company before it runs what is queued.
    0 (default): an idle worker runs at once; batches form from what arrives while it is
    busy, up to max_batch."""
    batch_buckets: Annotated[list[int], NoDecode] = Field(default_factory=list)
    """Comma-separated batch sizes an engine was built for (e.g. ``1,2,4,8``). A batch is
    padded with dummy work up to the next bucket. Empty: any size runs as is."""

    # ------------------------------------------------------------------ admission
    max_queue: Annotated[int, Field(ge=1, le=100_000)] = 64
    """Requests waiting for the pipeline (not yet started). Beyond it: 429 + Retry-After."""
    request_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    """Per-request deadline from arrival; past it: 504, and the work is dropped if not started."""
    drain_timeout_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 30.0
    """On SIGTERM: how long accepted requests may take to finish before the process exits."""
    header_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 10.0
    """Time a connection may take to send a complete request head (from connect or from
    the end of the previous response); past it: 408 and close (slow clients)."""
    body_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    """Time a client may take to send the request body once its head is in; past it:
    408 and close."""
    write_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    """Time a response may stay unsent because the client does not read it (the send
    buffer stays full); past it the connection is aborted (slow readers)."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 2**20)] = 64 * 1024
    """Largest request body, enforced while reading (413 beyond)."""
    max_prompt_chars: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """Longest prompt in characters (422 beyond)."""

    # ------------------------------------------------------------------ security/logs
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Comma-separated API keys. Empty: no authentication. /healthz and /readyz are open."""
    metrics_require_key: bool = False
    """Whether /metrics needs an API key too (only when api_keys is set)."""
    log_prompts: bool = False
    """Log prompt text with each request (off by default: prompts may be private)."""
    log_format: Literal["json", "text"] = "json"
    """Log line format of ``ragturbo serve``."""

    # ------------------------------------------------------------------ server
    host: str = "127.0.0.1"
    """Bind address of ``ragturbo serve`` (the --host option overrides)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """Bind port of ``ragturbo serve`` (the --port option overrides)."""
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated Host header values served (no port; ``*``: any; ``*.example.com``:
    subdomains); others get 400 (against DNS rebinding). Empty: ``localhost, 127.0.0.1,
    ::1`` on a loopback bind address, any host otherwise."""

    @field_validator("batch_buckets", "api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("batch_buckets")
    @classmethod
    def _buckets_sorted(cls, value: list[int]) -> list[int]:
        bad = [b for b in value if b < 1]
        if bad:
            raise ValueError(f"batch_buckets must be positive, got {value}")
        return sorted(set(value))

    @field_validator("qdrant_url", mode="before")
    @classmethod
    def _qdrant_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            return None
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("must be an http(s) URL such as http://qdrant:6333")
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value != "auto" and value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; choose from {('auto', *BACKENDS)}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip() or _default_device()
        if not (value == "cpu" or value == "cuda" or value.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Settings:
        dev_type = self.device.split(":")[0]
        if self.backend == "auto":
            # frozen model: resolve once here, so every reader sees the backend that runs
            object.__setattr__(self, "backend", AUTO[dev_type])
        caps = capabilities(self.backend)
        if self.dtype == "auto":  # float16 on CUDA, float32 on CPU, where the backend runs it
            object.__setattr__(self, "dtype", caps.default_dtype(dev_type, "float16" if dev_type == "cuda" else "float32"))
        if self.synthetic_pairs and not caps.searches:
            raise ValueError(
                f"synthetic_pairs={self.synthetic_pairs} needs a backend that searches inside its graph "
                f"({', '.join(n for n in BACKENDS if capabilities(n).searches)}), got {self.backend!r}"
            )
        why = caps.refusal(self.backend, dev_type, self.dtype, self.vae_decoder,
                           {"onnx_dir": self.onnx_dir, "engine_dir": self.engine_dir})
        if why is not None:
            raise ValueError(why)
        if self.batch_buckets and max(self.batch_buckets) < self.max_batch:
            raise ValueError(
                f"max_batch={self.max_batch} exceeds the largest batch bucket "
                f"{max(self.batch_buckets)} (batch_buckets={self.batch_buckets})"
            )
        if self.vae_decoder == "small":
            small = (self.model_dir / "vae_small") if self.model_dir is not None else None
            if small is not None and not (small / "config.json").is_file():
                raise ValueError(
                    f"vae_decoder='small' needs {small}/config.json and its weights "
                    "(train them with `ragturbo toyworld small-decoder`), or set vae_decoder='full'"
                )
        if self.ingest_dir is not None and not self.api_keys:
            raise ValueError(f"ingest_dir={str(self.ingest_dir)!r} needs api_keys to be set (it is empty)")
        if self.metrics_require_key and not self.api_keys:
            raise ValueError("metrics_require_key=true needs api_keys to be set (it is empty)")
        if any(len(k.get_secret_value()) < 8 for k in self.api_keys):
            raise ValueError("every API key must have at least 8 characters")
        return self

    def secret_values(self) -> list[str]:
        """The values no log line or response may show (API keys, Qdrant key and password)."""
        out = [k.get_secret_value() for k in self.api_keys]
        if self.qdrant_api_key is not None:
            out.append(self.qdrant_api_key.get_secret_value())
        return [s for s in (*out, *url_secrets(self.qdrant_url)) if s]

    def resolved_model_dir(self) -> Path:
        """model_dir, or the embedded default (may write a random tiny model under db_path)."""
        from engines.default_model import resolve_model_dir

        return resolve_model_dir(self.model_dir, self.db_path, read_env=False)

    def bucket_for(self, n: int) -> int:
        """The batch size an engine runs for ``n`` real images (n itself without buckets or
        past the largest)."""
        fits = bool(self.batch_buckets) and n <= self.batch_buckets[-1]
        return bucket_for(n, self.batch_buckets) if fits else n


_SECRET_FIELDS = frozenset({"api_keys", "qdrant_api_key"})
OTHER_ENV = frozenset({"RAGTURBO_LOG_LEVEL", "RAGTURBO_SHIPPED_MODEL_DIR", "RAGTURBO_URL",
                       "RAGTURBO_API_KEY"})
"""RAGTURBO_* variables read outside ``Settings`` (log level, shipped model, CLI client)."""


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """One line per ``RAGTURBO_*`` variable that no setting reads, naming the closest one
    (a misspelt ``RAGTURBO_MAXBATCH=4`` is otherwise silently ignored)."""
    import difflib

    known = {f"RAGTURBO_{f.upper()}" for f in Settings.model_fields} | OTHER_ENV
    out = []
    for name in sorted(k for k in environ if k.upper().startswith("RAGTURBO_")):
        if name.upper() in known:
            continue
        tails = {k.removeprefix("RAGTURBO_"): k for k in known}  # the prefix matches anyway
        close = difflib.get_close_matches(name.upper().removeprefix("RAGTURBO_"), sorted(tails), n=1)
        hint = f"; did you mean {tails[close[0]]}?" if close else ""
        out.append(f"unknown setting {name} is ignored{hint}")
    return out


def settings_error_message(exc: Exception) -> str:
    """One line per invalid setting, naming the env variable and the offending value.

    Secret fields show no value (pydantic's own message would echo every input).
    """
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    lines = []
    for err in errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if not loc:  # cross-field check: its message carries the values
            lines.append(str(err.get("msg", "")).removeprefix("Value error, "))
            continue
        name = f"RAGTURBO_{loc.split('.')[0].upper()}"
        field_name = loc.split(".")[0]
        if field_name in _SECRET_FIELDS:
            value = "<hidden>"
        elif field_name == "qdrant_url":  # the value, without a password
            value = repr(redact_url(str(err.get("input"))))
        else:
            value = repr(err.get("input"))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        lines.append(f"{name}: {msg} (got {value})")
    return "invalid settings:\n  " + "\n  ".join(lines)
