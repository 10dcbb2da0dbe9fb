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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engines.backends.base import (
    BackendUnavailable,
    GraphBackend,
    SearchingBackend,
    device_and_dtype,
)
from engines.backends.registry import Capabilities
from engines.cuda_graphs import pad_to
from engines.fast.gpu_index import FeatureDtype, GpuIndex, IndexFull
from engines.fast.host import HostCopy, device_jpeg_encoder
from engines.fast.runner import STAGES, FastConfig, FastRunner
from engines.inject import mix_retrieval
from engines.pipeline import OneStepPipeline
from engines.request import Batch, GenerateOutput, TextEmbeddings
from engines.rules import tokenize_prompts
from engines.shapes import BATCH_BUCKETS, bucket_for, spec_from_pipeline
from engines.token_cache import TokenCache

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

log = logging.getLogger(__name__)

DEFAULT_K_BUCKETS: tuple[int, ...] = (1, 4, 8)


class FastBackend(GraphBackend, SearchingBackend):
    """The serving engine over a ``OneStepPipeline`` (see module docstring): a ``GraphBackend``
    whose ``generate`` runs the runner's fused graphs; ``_run`` gives the three graphs
    eagerly (``denoise``, ``decode_latents``, the parity tests' stage-by-stage path).

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
        self.model = None
        self._setup(pipe.device, pipe.dtype, spec_from_pipeline(pipe), pipe.name, pipe.fingerprint,
                    pipe.tokenizer, pipe.scheduler_config, pipe.student_timestep, inject_weight)
        self.pipe = self._torch_pipe = pipe  # ingest calls run on it
        self.k_buckets = tuple(sorted({int(k) for k in k_buckets}))
        if not self.k_buckets or self.k_buckets[0] < 1:
            raise ValueError(f"k_buckets must be positive, got {k_buckets}")
        self.k_max = self.k_buckets[-1]
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {buckets}")
        self.max_batch, self.max_k = self.buckets[-1], self.k_max
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
        self.jpeg_quality = 90
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
        """The batch bucket of a chunk of ``n`` <= the largest bucket."""
        return bucket_for(n, self.buckets)

    def kbucket(self, k: int) -> int:
        return bucket_for(k, self.k_buckets, "k")

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (B,77) int64 on the host; repeated prompts come from a small LRU cache."""
        return self._tok.ids(prompts)

    def _run(self, component: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The three graphs of ``engines.shapes`` on the runner's modules, eagerly."""
        r = self.runner
        if component == "text_encoder":
            ctx, pooled = r.text(inputs["input_ids"])
            return {"context": ctx, "pooled": pooled}
        if component == "unet":
            z = inputs["sample"].to(self.dtype)
            if r.cfg.channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            ctx = inputs["context"].to(self.dtype)
            h, skips, temb = self.pipe.unet.encode(z, inputs["timestep"].long(), ctx)
            h = mix_retrieval(h, inputs["h_retr"].to(self.dtype), inputs["lam"], inputs["controls"],
                              self.pipe.hadapter, r.inject_weight)
            return {"model_output": self.pipe.unet.decode(h, skips, temb, ctx)}
        if component == "vae_decoder":
            return {"image": r.decoder(r.post_quant_conv(inputs["latent"].to(self.dtype) / r._sf))}
        raise KeyError(f"no graph {component!r}")

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

    # ------------------------------------------------------------------ generate
    @torch.inference_mode()
    def generate(
        self, batch: Batch | TextEmbeddings, seeds: Sequence[int] | None = None,
        modes: Sequence[str] | str = "adapter", h_retr: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
    ) -> GenerateOutput:
        """A batch through the search graph (``batch.search`` set: the device index is
        searched, request i uses its first k neighbours) or the given graph (neighbours
        from the caller, k <= k_max); chunks of the largest bucket, each padded to its bucket."""
        batch = Batch.of(batch, seeds, modes, h_retr, lam)
        if batch.search is not None:
            if self.runner.index is None:
                raise RuntimeError("an in-graph search needs a device index (reserve_index/add_index_rows)")
            if max(batch.ks, default=1) > self.k_max:
                raise ValueError(f"k must be in 1..{self.k_max}, got {[k for k in batch.ks if k > self.k_max]}")
            if self._min_score != float(batch.search):
                self.runner.set_min_score(batch.search)
                self._min_score = float(batch.search)
            run = self._search_chunk
        else:
            nb = batch.neighbours
            if nb is not None and (nb.k > self.k_max or tuple(nb.h_retr.shape[2:]) != tuple(self.h_shape)):
                raise ValueError(f"h_retr must be (B,k<={self.k_max},{','.join(map(str, self.h_shape))}) "
                                 f"and lam (B,k); got {tuple(nb.h_retr.shape)}, {tuple(nb.lam.shape)}")
            if batch.text is None:
                batch = replace(batch, text=self.encode_text(batch.prompts))
            run = self._given_chunk
        timings = dict.fromkeys(STAGES, 0.0)
        outs = [run(part, timings) for part in batch.chunks(self.max_batch)]
        encoded = [e for o in outs for e in (o.encoded or [None] * len(o.images))]
        return GenerateOutput(
            images=np.concatenate([o.images for o in outs]), timings_ms=timings,
            rows=np.concatenate([o.rows for o in outs]) if batch.search is not None else None,  # type: ignore[misc]
            scores=np.concatenate([o.scores for o in outs]) if batch.search is not None else None,  # type: ignore[misc]
            encoded=encoded if any(e is not None for e in encoded) else None,
        )

    def _search_chunk(self, part: Batch, timings: dict[str, float]) -> GenerateOutput:
        n = len(part)
        bb, kb = self.bucket(n), self.kbucket(max(part.ks))
        t0 = time.perf_counter()
        ids = self.tokenize(part.prompts)
        noise = self.initial_noise(part.seeds)
        kmask = (torch.arange(kb)[None, :] < torch.tensor(part.ks)[:, None]).float()
        timings["text"] += (time.perf_counter() - t0) * 1e3
        self._ensure_bucket(bb, "search", kb)
        t1 = time.perf_counter()
        img, r, s = self.runner.run(
            "search", ids=self._pad(ids, bb), noise=self._pad(noise, bb), kmask=self._pad(kmask, bb),
            ctrl=self._pad(part.controls(), bb),
        )
        r_h, s_h = r[:n].cpu(), s[:n].cpu()  # small: synchronises with the graph
        t2 = time.perf_counter()
        images = self._to_host(img[:n])
        encoded: list[bytes | None] = [None] * n
        jpeg_idx = [i for i, r in enumerate(part.requests) if r.fmt == "jpeg"] if self._jpeg else []
        if jpeg_idx:
            assert self._jpeg is not None
            chw = [img[i].permute(2, 0, 1).contiguous() for i in jpeg_idx]
            for i, data in zip(jpeg_idx, self._jpeg(chw, quality=self.jpeg_quality)):
                encoded[i] = data.cpu().numpy().tobytes()
        for key, v in self._split(bb, kb, (t2 - t1) * 1e3).items():
            timings[key] += v
        timings["vae"] += (time.perf_counter() - t2) * 1e3
        return GenerateOutput(images=images, rows=r_h.numpy(), scores=s_h.numpy().astype(np.float32),
                              encoded=encoded)

    def _given_chunk(self, part: Batch, timings: dict[str, float]) -> GenerateOutput:
        assert part.text is not None
        n, nb = len(part), part.neighbours
        bb, kb = self.bucket(n), self.kbucket(nb.k if nb is not None else 1)
        shape = (bb, kb, *self.h_shape)
        hr = pad_to(nb.h_retr.float().cpu(), shape) if nb is not None else torch.zeros(shape)
        lm = pad_to(nb.lam.float().cpu(), shape[:2]) if nb is not None else torch.zeros(shape[:2])
        noise = self.initial_noise(part.seeds)
        self._ensure_bucket(bb, "given", kb)
        t1 = time.perf_counter()
        (img,) = self.runner.run(
            "given", ctx=self._pad(part.text.context, bb), noise=self._pad(noise, bb), h_retr=hr, lam=lm,
            ctrl=self._pad(part.controls(), bb),
        )
        images = img[:n].cpu().numpy()
        timings["unet"] += (time.perf_counter() - t1) * 1e3
        return GenerateOutput(images=images)

    def _encode_chunk(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text graph of the chunk's bucket (``GraphBackend.encode_text`` chunks)."""
        n, bb = len(ids), self.bucket(len(ids))
        self._ensure_bucket(bb, "text", 0)
        c, p = self.runner.run("text", ids=self._pad(ids, bb))
        return c[:n], p[:n]

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
