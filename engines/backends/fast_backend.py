"""``fast``: the CUDA serving engine (the default on a CUDA device).

``engines.fast.FastRunner`` behind the backend interface: fp16, channels-last,
``torch.compile`` and one CUDA graph per batch bucket covering token ids -> text encoder
-> exact top-K cosine search over the device copy of the database (``GpuIndex``) -> λ
-> gather -> UNet encoder -> adapter / injection / nothing per sample -> decoder -> x0
-> VAE -> uint8. Batches are padded up to the next bucket (padded rows compute and are
dropped) and split above the largest; a request's k and mode are masks, so one graph
serves any mix. Every bucket is compiled and captured in ``warmup`` (before the service
is ready), never during traffic.

Without a device index (``reserve_index`` not called: a database too large for the
device, or a Qdrant cluster) ``encode_text`` and ``generate`` run the ``text`` and
``given`` graphs, and neighbours come from the caller. On CPU the same stages run
eagerly (no compile, no graphs): what the CPU tests exercise.

Stage times of a whole-graph replay cannot be read separately; ``timings_ms`` splits the
measured wall time of the replay by the per-stage graph times measured at warm-up for
that bucket (host work: tokenizing and noise count as text, the copy to the host as vae).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engines.backends.base import (
    BackendUnavailable,
    SearchingBackend,
    SearchOutput,
    device_and_dtype,
)
from engines.backends.registry import Capabilities
from engines.cuda_graphs import pad_to
from engines.fast.gpu_index import FeatureDtype, GpuIndex, IndexFull
from engines.fast.host import HostCopy, device_jpeg_encoder
from engines.fast.runner import STAGES, FastConfig, FastRunner
from engines.pipeline import GenerateOutput, OneStepPipeline, TextEmbeddings
from engines.rules import normalize_modes, seeded_noise, tokenize_prompts
from engines.shapes import BATCH_BUCKETS, bucket_for
from engines.token_cache import TokenCache

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

log = logging.getLogger(__name__)

DEFAULT_K_BUCKETS: tuple[int, ...] = (1, 4, 8)


class FastBackend(SearchingBackend):
    """The serving engine over a ``OneStepPipeline`` (see module docstring).

    Args:
        compile: "whole", "regional" or "none" (default: "whole" on CUDA, "none" on CPU).
        cuda_graphs: one graph per bucket (default: on CUDA).
        buckets: batch buckets; larger batches are split into chunks of the largest.
        k_buckets: neighbour counts K a graph is captured for (requests ask for 1..max);
            a batch runs the smallest K >= its largest k (K neighbours cost adapter work).
    """

    backend_name = "fast"
    capabilities = Capabilities(
        dtypes={"cpu": ("float32", "bfloat16"), "cuda": ("float16", "bfloat16", "float32")},
        searches=True, buckets=True)

    @classmethod
    def open(
        cls, model_dir: str | Path | ModelDir, *, device: torch.device, dtype: torch.dtype,
        inject_weight: float, vae_decoder: str, graph_dir: str | Path | None = None, **options: Any,
    ) -> FastBackend:
        return cls.from_model_dir(model_dir, device, dtype, inject_weight, vae_decoder=vae_decoder, **options)

    def __init__(
        self,
        pipe: OneStepPipeline,
        *,
        compile: str | None = None,
        cuda_graphs: bool | None = None,
        subpixel_vae: bool = True,
        buckets: Sequence[int] = BATCH_BUCKETS,
        k_buckets: Sequence[int] = DEFAULT_K_BUCKETS,
        inject_weight: float = 0.8,
        tokenizer_cache: int = 4096,
    ) -> None:
        on_cuda = pipe.device.type == "cuda"
        self.pipe = pipe
        self._shapes = pipe
        self.name = pipe.name
        self.fingerprint = pipe.fingerprint
        self.device = pipe.device
        self.dtype = pipe.dtype
        self.k_buckets = tuple(sorted({int(k) for k in k_buckets}))
        if not self.k_buckets or self.k_buckets[0] < 1:
            raise ValueError(f"k_buckets must be positive, got {k_buckets}")
        self.k_max = self.k_buckets[-1]
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {buckets}")
        cfg = FastConfig(
            compile=compile or ("whole" if on_cuda else "none"),
            cuda_graphs=on_cuda if cuda_graphs is None else cuda_graphs,
            subpixel_vae=subpixel_vae,
            channels_last=on_cuda,
        )
        if cfg.cuda_graphs and not on_cuda:
            raise BackendUnavailable("fast: cuda_graphs=True needs a CUDA device")
        self.runner = FastRunner(pipe, self.k_max, cfg, inject_weight=inject_weight)
        self._tok = TokenCache(
            lambda ps: tokenize_prompts(pipe.tokenizer, ps, pipe.max_length, torch.device("cpu")),
            tokenizer_cache,
        )
        self._min_score: float | None = None
        self._warm: set[str] = set()
        self._index_dtype: FeatureDtype = "float16"
        self._jpeg = device_jpeg_encoder(self.device)
        self._to_host = HostCopy(self.device)
        log.info(
            "fast: JPEG encoding %s", "on the device (nvJPEG, torchvision.io.encode_jpeg)"
            if self._jpeg else "on the host (Pillow)",
        )

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path | ModelDir,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        inject_weight: float = 0.8,
        vae_decoder: str = "full",
        **options: Any,
    ) -> FastBackend:
        dev, dtype = device_and_dtype(cls, device, dtype)
        pipe = OneStepPipeline.from_pretrained(
            model_dir, device=dev, dtype=dtype, inject_weight=inject_weight, vae_decoder=vae_decoder
        )
        for m in pipe.modules().values():
            m.eval().requires_grad_(False)
        return cls(pipe, inject_weight=inject_weight, **options)

    # ------------------------------------------------------------------ properties
    @property
    def index_rows(self) -> int:
        return self.runner.index.n if self.runner.index is not None else 0

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        idx = self.runner.index
        d.update(
            dtype=str(self.dtype), compile=self.runner.cfg.compile, cuda_graphs=self.runner.use_graphs,
            buckets=list(self.buckets), k_buckets=list(self.k_buckets),
            index_rows=self.index_rows, index_capacity=idx.capacity if idx else 0,
            index_feature_dtype=idx.feature_dtype if idx else None,
            index_gib=round(idx.nbytes() / 2**30, 3) if idx else 0.0,
            jpeg="device" if self._jpeg else "host", vae_decoder=self.pipe.vae_decoder,
        )
        return d

    # ------------------------------------------------------------------ device index
    def reserve_index(self, capacity: int, feature_dtype: str = "float16") -> None:
        if feature_dtype not in ("float16", "float8"):
            raise ValueError(f"feature_dtype must be float16 or float8, got {feature_dtype!r}")
        self._index_dtype = feature_dtype  # type: ignore[assignment]
        idx = GpuIndex(
            self.embed_dim, self.h_shape, max(capacity, self.k_max), self.device, self.dtype,
            self._index_dtype, min_rows=self.k_max,
        )
        self.runner.set_index(idx)
        self._warm.discard("search")
        log.info(
            "fast: device index for %d rows (%s features, %.2f GiB)",
            idx.capacity, feature_dtype, idx.nbytes() / 2**30,
        )

    def add_index_rows(self, embeddings: torch.Tensor, features: torch.Tensor) -> range:
        if self.runner.index is None:
            self.reserve_index(max(1024, 2 * len(embeddings)))
        idx = self.runner.index
        assert idx is not None
        try:
            return idx.append(embeddings, features)
        except IndexFull:
            pass
        # Grow: a new index of twice the rows, the old rows copied, graphs re-captured
        # (compiled code is cached, so this costs captures, not compiles).
        new = idx.grown(2 * (idx.n + len(embeddings)), min_rows=self.k_max)
        rows = new.append(embeddings, features)
        rewarm = "search" in self._warm
        self.runner.set_index(new)
        log.warning("fast: device index grown to %d rows; re-capturing the search graphs", new.capacity)
        if rewarm:
            self._warm.discard("search")
            self._warmup(("search",))
        return rows

    # ------------------------------------------------------------------ host helpers
    def bucket(self, n: int) -> int:
        """The batch bucket of a chunk of ``n`` <= the largest bucket (``_chunks``)."""
        return bucket_for(n, self.buckets)

    def kbucket(self, k: int) -> int:
        return bucket_for(k, self.k_buckets, "k")

    def _chunks(self, b: int) -> list[slice]:
        step = self.buckets[-1]
        return [slice(i, min(i + step, b)) for i in range(0, b, step)]

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (B,77) int64 on the host; repeated prompts come from a small LRU cache."""
        return self._tok.ids(prompts)

    def _noise(self, seeds: Sequence[int]) -> torch.Tensor:
        return seeded_noise(seeds, self.latent_shape)

    @staticmethod
    def _pad(x: torch.Tensor, bb: int) -> torch.Tensor:
        return pad_to(x, (bb, *x.shape[1:]))

    def _ensure_bucket(self, bb: int, variant: str, kb: int = 0) -> None:
        if (bb, variant, kb) not in self.runner.buckets and self.runner.use_graphs:
            # Only reached when warmup did not cover this variant: say so loudly.
            log.warning("fast: bucket %d (%s, K=%d) was not warmed up; capturing during traffic",
                        bb, variant, kb)
            self.runner.prepare(bb, variant, k=kb or None)

    def _split(self, bb: int, kb: int, graph_ms: float) -> dict[str, float]:
        sm = self.runner.stage_ms(bb, "search", kb)
        if not sm:  # eager (CPU): one bucket was profiled; its shares stand for all
            sm = next((b.stage_ms for b in self.runner.buckets.values() if b.stage_ms), {})
        tot = sum(sm.get(s, 0.0) for s in STAGES)
        if tot <= 0:
            return {"text": 0.0, "retrieval": 0.0, "unet": graph_ms, "vae": 0.0}
        return {s: graph_ms * sm.get(s, 0.0) / tot for s in STAGES}

    # ------------------------------------------------------------------ search path
    @torch.inference_mode()
    def generate_search(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        modes: Sequence[str],
        ks: Sequence[int],
        min_score: float,
        encode: Sequence[str | None] | None = None,
        jpeg_quality: int = 90,
    ) -> SearchOutput:
        b = len(prompts)
        want_jpeg = [f == "jpeg" for f in encode] if encode is not None and self._jpeg else [False] * b
        encoded: list[bytes | None] = [None] * b
        if not (len(seeds) == len(ks) == b):
            raise ValueError(f"got {len(seeds)} seeds and {len(ks)} ks for {b} prompts")
        if self.runner.index is None:
            raise RuntimeError("generate_search needs a device index (reserve_index/add_index_rows)")
        bad = [k for k in ks if not 1 <= int(k) <= self.k_max]
        if bad:
            raise ValueError(f"k must be in 1..{self.k_max}, got {bad}")
        ms = normalize_modes(modes, b)
        if self._min_score != float(min_score):
            self.runner.set_min_score(min_score)
            self._min_score = float(min_score)
        t0 = time.perf_counter()
        ids = self.tokenize(prompts)
        noise = self._noise(seeds)
        kmask = (torch.arange(self.k_max)[None, :] < torch.tensor([int(k) for k in ks])[:, None]).float()
        kt = torch.tensor([int(k) for k in ks])
        ad = torch.tensor([m == "adapter" for m in ms], dtype=torch.float32)
        inj = torch.tensor([m == "inject" for m in ms], dtype=torch.float32)
        timings = dict.fromkeys(STAGES, 0.0)
        timings["text"] += (time.perf_counter() - t0) * 1e3
        imgs, rows, scores = [], [], []
        for sl in self._chunks(b):
            n = sl.stop - sl.start
            bb = self.bucket(n)
            kb = self.kbucket(int(kt[sl].max()))
            self._ensure_bucket(bb, "search", kb)
            t1 = time.perf_counter()
            img, r, s = self.runner.run(
                "search", ids=self._pad(ids[sl], bb), noise=self._pad(noise[sl], bb),
                kmask=self._pad(kmask[sl, :kb], bb), admask=self._pad(ad[sl], bb),
                injmask=self._pad(inj[sl], bb),
            )
            r_h, s_h = r[:n].cpu(), s[:n].cpu()  # small: synchronises with the graph
            t2 = time.perf_counter()
            imgs.append(self._to_host(img[:n]))
            jpeg_idx = [i for i in range(n) if want_jpeg[sl.start + i]]
            if jpeg_idx:
                assert self._jpeg is not None
                chw = [img[i].permute(2, 0, 1).contiguous() for i in jpeg_idx]
                for i, data in zip(jpeg_idx, self._jpeg(chw, quality=jpeg_quality)):
                    encoded[sl.start + i] = data.cpu().numpy().tobytes()
            t3 = time.perf_counter()
            rows.append(r_h.numpy())
            scores.append(s_h.numpy())
            for key, v in self._split(bb, kb, (t2 - t1) * 1e3).items():
                timings[key] += v
            timings["vae"] += (t3 - t2) * 1e3
        return SearchOutput(
            images=np.concatenate(imgs), rows=np.concatenate(rows),
            scores=np.concatenate(scores).astype(np.float32), timings_ms=timings,
            encoded=encoded if any(e is not None for e in encoded) else None,
        )

    # ------------------------------------------------------------------ generic path
    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> TextEmbeddings:
        ids = self.tokenize(prompts)
        ctx, pooled = [], []
        for sl in self._chunks(len(ids)):
            n = sl.stop - sl.start
            bb = self.bucket(n)
            self._ensure_bucket(bb, "text", 0)
            c, p = self.runner.run("text", ids=self._pad(ids[sl], bb))
            ctx.append(c[:n].float())
            pooled.append(p[:n].float())
        return TextEmbeddings(torch.cat(ctx), torch.cat(pooled))

    @torch.inference_mode()
    def generate(
        self,
        text: TextEmbeddings,
        seeds: Sequence[int],
        modes: Sequence[str] | str = "adapter",
        h_retr: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
    ) -> GenerateOutput:
        """Neighbours from the caller: h_retr (B,k,C,h,w), λ (B,k) with k <= k_max."""
        b = len(text)
        if len(seeds) != b:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {b}")
        ms = normalize_modes(modes, b)
        c, hh, ww = self.h_shape
        if (h_retr is None) != (lam is None):
            raise ValueError("pass both h_retr and lam, or neither")
        k = 1 if h_retr is None else int(h_retr.shape[1])
        kb = self.kbucket(k) if k <= self.k_max else k
        hr = torch.zeros((b, kb, c, hh, ww))
        lm = torch.zeros((b, kb))
        if h_retr is not None and lam is not None:
            if k > self.k_max or tuple(h_retr.shape) != (b, k, c, hh, ww) or tuple(lam.shape) != (b, k):
                raise ValueError(
                    f"h_retr must be (B={b},k<={self.k_max},{c},{hh},{ww}) and lam (B,k); got "
                    f"{tuple(h_retr.shape)}, {tuple(lam.shape)}"
                )
            hr[:, :k] = h_retr.float().cpu()
            lm[:, :k] = lam.float().cpu()
        ad = torch.tensor([m == "adapter" for m in ms], dtype=torch.float32)
        inj = torch.tensor([m == "inject" for m in ms], dtype=torch.float32)
        noise = self._noise(seeds)
        timings: dict[str, float] = {"unet": 0.0, "vae": 0.0}
        imgs = []
        for sl in self._chunks(b):
            n = sl.stop - sl.start
            bb = self.bucket(n)
            self._ensure_bucket(bb, "given", kb)
            t1 = time.perf_counter()
            (img,) = self.runner.run(
                "given", ctx=self._pad(text.context[sl], bb), noise=self._pad(noise[sl], bb),
                h_retr=self._pad(hr[sl], bb), lam=self._pad(lm[sl], bb),
                admask=self._pad(ad[sl], bb), injmask=self._pad(inj[sl], bb),
            )
            imgs.append(img[:n].cpu().numpy())
            timings["unet"] += (time.perf_counter() - t1) * 1e3
        return GenerateOutput(images=np.concatenate(imgs), timings_ms=timings)

    # ------------------------------------------------------------------ warm-up
    def warmup(self, search: bool = False) -> float:
        """Compile and capture every bucket that serving runs: the search graphs when the
        device copy is attached (``search``), else text + given; seconds."""
        return self._warmup(("search",) if search and self.runner.index is not None else ("text", "given"))

    def _warmup(self, variants: Sequence[str]) -> float:
        """Every bucket of ``variants``; stage times are measured for the search graphs."""
        t0 = time.perf_counter()
        if not self.runner.use_graphs:
            # Eager (CPU): nothing to compile or capture; profile one bucket for the stage
            # shares of timings_ms.
            if "search" in variants and self.runner.index is not None:
                self.runner.prepare(self.buckets[0], "search", stages=True, k=self.k_buckets[0])
            self._warm.update(variants)
            return time.perf_counter() - t0
        for v in variants:
            for bb in self.buckets:
                for kb in (self.k_buckets if v in ("search", "given") else (0,)):
                    if (bb, v, kb) not in self.runner.buckets:
                        self.runner.prepare(bb, v, stages=v == "search", k=kb or None)
            self._warm.add(v)
        self.runner.drop_stage_graphs()
        dt = time.perf_counter() - t0
        log.info("fast: warm-up of %s for buckets %s took %.1f s", list(variants), self.buckets, dt)
        return dt

    # ------------------------------------------------------------------ ingest (torch)
    def encode_images(self, images: Any) -> torch.Tensor:
        return self.pipe.encode_images(images)

    def retrieval_features(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.pipe.retrieval_features(latents, context)

