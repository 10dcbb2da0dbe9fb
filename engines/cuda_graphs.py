"""CUDA graphs per batch bucket: the one copy of "warm up, capture, replay" for both runners.

- ``capture_graphs``: warm zero-argument functions up on a side stream (``torch.compile``
  and allocator warm-up happen outside capture), then capture each into a
  ``torch.cuda.CUDAGraph``; the static outputs each graph writes into come back beside it.
  With graphs off it is the eager fallback: each function runs once (its first use, where
  compilation happens) and is kept as it is, so ``replayer`` runs it eagerly.
- ``PaddedBucketRunner``: pads a batch up to the next bucket (and K to ``k_pad``) and runs
  a tensor function on those static shapes, one captured graph per bucket (``torch-opt``).

``engines.fast.runner.FastRunner`` captures several named stages of one bucket through
``capture_graphs`` with a shared memory pool; the bucket choice is
``engines.shapes.bucket_for``. Not to be confused with ``engines.graphs``
(the ``nn.Module`` graphs that are exported and compiled).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from engines.shapes import bucket_for

log = logging.getLogger(__name__)


def capture_graphs(
    fns: Mapping[str, Callable[[], Any]],
    device: torch.device | str,
    *,
    enabled: bool = True,
    pool: Any = None,
    warmup: int = 2,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Capture each of ``fns`` (closures over static input tensors) as a CUDA graph.

    Args:
        fns: name -> zero-argument function; its tensors must stay at fixed addresses.
        device: the CUDA device the graphs run on.
        enabled: False gives the eager fallback (each function runs once and is returned).
        pool: a ``torch.cuda.graph_pool_handle()`` shared by graphs that never run at once.
        warmup: passes over all of ``fns`` on a side stream before capture.

    Returns:
        ``(graphs, outputs)``: name -> ``CUDAGraph`` (eager: the function itself) and
        name -> the static outputs the graph's replay overwrites (eager: empty).
    """
    dev = torch.device(device)
    if not enabled:
        for fn in fns.values():
            fn()
        return dict(fns), {}
    if dev.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, got {dev}")
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            for fn in fns.values():
                fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    torch.cuda.synchronize(dev)
    graphs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for name, fn in fns.items():
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            outputs[name] = fn()
        graphs[name] = g
    torch.cuda.synchronize(dev)
    return graphs, outputs


def replayer(graph_or_fn: Any) -> Callable[[], Any]:
    """What reruns an entry of ``capture_graphs``'s graphs: ``replay`` or the eager function."""
    return graph_or_fn.replay if isinstance(graph_or_fn, torch.cuda.CUDAGraph) else graph_or_fn


def as_tuple(res: Any) -> tuple[torch.Tensor, ...]:
    """A graph function's outputs as a tuple (one tensor or several)."""
    return res if isinstance(res, tuple) else (res,)


def pad_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``x`` zero-padded at the end of each dimension up to ``shape`` (``x`` itself when it
    already has that shape): a batch padded to its bucket, neighbours to the graph's K."""
    if tuple(x.shape) == tuple(shape):
        return x
    out = x.new_zeros(tuple(shape))
    out[tuple(slice(0, s) for s in x.shape)] = x
    return out


class PaddedBucketRunner:
    """Pads a batch to the next bucket (and K to ``k_pad``) and runs ``fn`` on static shapes.

    ``fn`` takes the inputs named ``input_names`` positionally, row-wise in the batch. Padded
    rows are zeros, computed and dropped; ``h_retr`` and ``lam`` are padded to ``k_pad``
    neighbours with zeros (a zero-λ neighbour adds nothing). With ``cuda_graphs`` each bucket
    is captured once (``capture_graphs``, ``warmup`` passes, no shared pool) over static
    input buffers and replayed afterwards; ``graphs`` maps bucket -> (graph, static inputs,
    static outputs).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        input_names: Sequence[str],
        buckets: Sequence[int],
        k_pad: int | None,
        cuda_graphs: bool,
        channels_last_inputs: Sequence[str] = (),
        warmup: int = 3,
    ) -> None:
        self.fn = fn
        self.input_names = list(input_names)
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        self.k_pad = k_pad
        self.cuda_graphs = cuda_graphs
        self.channels_last_inputs = set(channels_last_inputs)
        self.warmup = warmup
        self.graphs: dict[int, tuple[Any, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]] = {}

    def bucket(self, b: int) -> int:
        return bucket_for(b, self.buckets)

    def _pad(self, inputs: dict[str, torch.Tensor], bb: int) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.input_names:
            x = inputs[n]
            shape = list(x.shape)
            shape[0] = bb
            if self.k_pad is not None and n in ("h_retr", "lam"):
                shape[1] = self.k_pad
            buf = pad_to(x, shape)
            if n in self.channels_last_inputs:
                buf = buf.contiguous(memory_format=torch.channels_last)
            out[n] = buf
        return out

    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        b = int(inputs[self.input_names[0]].shape[0])
        bb = self.bucket(b)
        if self.k_pad is not None and "h_retr" in inputs and inputs["h_retr"].shape[1] > self.k_pad:
            raise ValueError(f"k={inputs['h_retr'].shape[1]} exceeds k_max {self.k_pad}")
        padded = self._pad(inputs, bb)
        if not self.cuda_graphs:
            return tuple(o[:b] for o in as_tuple(self.fn(*padded.values())))
        if bb not in self.graphs:
            self.graphs[bb] = self._capture(padded)
        graph, static_in, static_out = self.graphs[bb]
        for n, x in padded.items():
            static_in[n].copy_(x)
        graph.replay()
        return tuple(o[:b].clone() for o in static_out)

    def _capture(
        self, example: dict[str, torch.Tensor]
    ) -> tuple[Any, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        static_in = {n: x.clone() for n, x in example.items()}
        first = static_in[self.input_names[0]]
        graphs, outputs = capture_graphs(
            {"fn": lambda: as_tuple(self.fn(*static_in.values()))}, first.device, warmup=self.warmup
        )
        log.info("captured a CUDA graph for batch bucket %d", first.shape[0])
        return graphs["fn"], static_in, outputs["fn"]
