"""Several sequences on one model: each owns a row of a shared KV cache, and decode steps run them together.

Batching choice: one batched forward of the reference model over every decoding sequence, each row at
its own position (`LlamaModel.forward_rows`: per-row RoPE, cache writes and masks), rather than
round-robin single-token steps. A step then reads the weights once for the whole batch, which is
what makes a few concurrent users nearly as cheap as one. A lone sequence takes the plain
single-sequence `forward`, so batch-1 decoding is exactly the path `sonic generate` runs. In a batch,
each row's logits equal its lone run's up to float rounding (a matrix product of several rows may
sum in another order), so greedy tokens match unless two candidates tie to the last bit; the tests
check token identity against batch-1 decoding.

Rows stay packed: decoding sequences hold rows 0..d-1, so a step's cache is a view of the first d
rows (no gather), and the one sequence being prefilled sits at row d until it joins them. When a
sequence leaves, the last decoding row moves into its place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sonic.engine.kv_cache import KVCache
from sonic.engine.runner_ref import CACHE_GRANULE


@dataclass(eq=False)
class Slot:
    row: int
    length: int = 0        # positions already in the cache
    owner: Any = None      # the caller's sequence object


class BatchRunner:
    """Up to `max_batch` sequences of up to `max_len` positions; the cache grows with what they use."""

    def __init__(self, model, max_batch: int, max_len: int):
        self.model, self.config = model, model.config
        self.max_batch, self.max_len = max_batch, max_len
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache: KVCache | None = None
        self.decoding: list[Slot] = []      # row i is decoding[i]
        self.filling: Slot | None = None    # the sequence being prefilled, at row len(decoding)

    @property
    def has_room(self) -> bool:
        return self.filling is None and len(self.decoding) < self.max_batch

    def open(self, owner: Any = None) -> Slot:
        """A slot for a new sequence, to prefill; only one is prefilled at a time."""
        assert self.has_room, "open() needs a free row and no other sequence being prefilled"
        self.filling = Slot(len(self.decoding), owner=owner)
        return self.filling

    def prefill(self, slot: Slot, ids: list[int], all_logits: bool = False) -> torch.Tensor:
        """Run `ids` after what the slot holds; logits [len(ids), V] (all_logits) or [1, V] (the last)."""
        self._fit(slot.length + len(ids))
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = self.model(x, slot.length, self._rows(slot.row, 1), last_only=not all_logits)
        slot.length += len(ids)
        return logits[0]

    def activate(self, slot: Slot):
        """The prefilled slot joins the decoding batch (it already sits at the next row)."""
        assert slot is self.filling
        self.decoding.append(slot)
        self.filling = None

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """One step for every decoding slot, `tokens[i]` into row i; logits [rows, V] (float32)."""
        slots = self.decoding
        self._fit(max(s.length for s in slots) + 1)
        x = torch.tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        if len(slots) == 1:
            logits = self.model(x, slots[0].length, self._rows(slots[0].row, 1))
        else:
            starts = torch.tensor([s.length for s in slots], device=self.device)
            logits = self.model.forward_rows(x, starts, self._rows(0, len(slots)))
        for s in slots:
            s.length += 1
        return logits[:, -1]

    # ---- speculative verification, for a sequence decoding alone ----
    def verify(self, slot: Slot, tokens: list[int]) -> torch.Tensor:
        """Logits [len(tokens), V] of `tokens` after what the slot holds, writing their K/V.

        Each row runs as the one-token step `decode` runs for a lone sequence (a batched pass would
        pick other CPU matmul kernels and differ in the last bits), so greedy speculation keeps the
        tokens of plain decoding exactly."""
        self._fit(slot.length + len(tokens))
        rows = []
        for t in tokens:
            x = torch.tensor([t], dtype=torch.long, device=self.device).view(-1, 1)
            rows.append(self.model(x, slot.length, self._rows(slot.row, 1))[0, -1])
            slot.length += 1
        return torch.stack(rows)

    def verify_argmax(self, slot: Slot, tokens: list[int]) -> list[int]:
        return self.verify(slot, tokens).argmax(dim=-1).tolist()

    def rewind(self, slot: Slot, length: int):
        """Keep the slot's first `length` positions; rejected drafts past them are overwritten later."""
        slot.length = min(slot.length, length)

    def release(self, slot: Slot):
        """Free a slot (finished, aborted or failed) and keep the rows packed."""
        if slot is self.filling:
            self.filling = None
            return
        if slot not in self.decoding:
            return
        i = self.decoding.index(slot)
        last = self.decoding.pop()
        if last is not slot:
            self._move(last, i)
            self.decoding[i] = last
        if self.filling is not None:
            self._move(self.filling, len(self.decoding))

    def _rows(self, row: int, count: int) -> KVCache:
        return self.cache.rows(row, row + count)

    def _move(self, slot: Slot, row: int):
        n = slot.length
        if self.cache is not None and n:
            self.cache.k[:, row, :, :n] = self.cache.k[:, slot.row, :, :n]
            self.cache.v[:, row, :, :n] = self.cache.v[:, slot.row, :, :n]
        slot.row = row

    def _fit(self, length: int):
        """Grow the cache (doubling, in whole granules) so `length` positions fit."""
        if length > self.max_len:
            raise ValueError(f"a sequence needs {length} positions but this runner holds {self.max_len}")
        old = self.cache
        if old is not None and old.max_len >= length:
            return
        size = max(length, 2 * old.max_len if old is not None else 0)
        size = min(-(-size // CACHE_GRANULE) * CACHE_GRANULE, self.max_len)
        new = KVCache(self.config, size, batch_size=self.max_batch, dtype=self.dtype, device=self.device)
        if old is not None:
            new.k[..., :old.max_len, :] = old.k
            new.v[..., :old.max_len, :] = old.v
        self.cache = new
