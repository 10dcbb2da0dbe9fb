"""Host-side helpers of the serving engine: pinned copies to the host and the device JPEG
encoder. Neither runs inside a CUDA graph."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class HostCopy:
    """Device uint8 images -> a fresh numpy array, through a pinned staging buffer per shape."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, img: torch.Tensor) -> np.ndarray:
        if self.device.type != "cuda":
            return img.cpu().numpy()
        shape = tuple(img.shape)
        buf = self._pinned.get(shape)
        if buf is None:
            buf = self._pinned[shape] = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        buf.copy_(img, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return buf.numpy().copy()


def device_jpeg_encoder(device: torch.device) -> Any:
    """torchvision's nvJPEG encoder for CUDA tensors, or None (CPU, or no torchvision).

    Measured on one H200 (2026-12-02): 0.14 ms an image at 512x512 in a batch of 16,
    against 3.0 ms for Pillow on the host, and it spares the copy of the raw pixels for
    JPEG requests.
    """
    if device.type != "cuda":
        return None
    try:
        from torchvision.io import encode_jpeg
    except Exception as e:  # noqa: BLE001 - optional: torchvision is not a dependency
        log.info("fast: torchvision.io.encode_jpeg unavailable (%s); JPEG on the host", e)
        return None
    return encode_jpeg
