"""A bounded LRU cache of token ids, keyed by prompt (what ``FastBackend.tokenize`` uses).

``TokenCache(tokenize, capacity)``: ``ids(prompts)`` returns the (B, L) int64 rows of
``prompts`` in order, calling ``tokenize`` once for the distinct prompts it does not hold.
The prompts of the batch are looked up (and refreshed) before the new ones are inserted,
and eviction only ever drops entries the current batch does not need, so a batch never
misses a row it was promised, whatever the mix of old, new and repeated prompts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch


class TokenCache:
    """LRU of prompt -> token-id row (1-D int64 tensor), at most ``capacity`` entries."""

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor], capacity: int = 4096) -> None:
        if capacity < 0:
            raise ValueError(f"tokenizer cache capacity must be >= 0, got {capacity}")
        self._tokenize = tokenize
        self.capacity = int(capacity)
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._rows

    def ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """prompts (B) -> token ids (B, L); repeated prompts are tokenized once."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        batch: dict[str, torch.Tensor] = {}
        missing: list[str] = []
        for p in dict.fromkeys(prompts):
            row = self._rows.get(p)
            if row is None:
                missing.append(p)
            else:
                self._rows.move_to_end(p)
                batch[p] = row
        if missing:
            for p, row in zip(missing, self._tokenize(missing)):
                batch[p] = row
                self._rows[p] = row
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
        return torch.stack([batch[p] for p in prompts])
