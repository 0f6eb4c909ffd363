"""Holds the interpreter to the declared accesses: runs one instruction with all the state it does not
declare poisoned, so an undeclared read turns its outputs into NaN (or, for indices, fails to index)
and an undeclared write shows up as a changed poisoned value. Slow; tests turn it on
(`MonoVM(..., guard=True)`), which makes `access.py`, the validator's view of each instruction, the
truth about what the interpreter touches.
"""
from __future__ import annotations

import torch

from sonic.mono.access import Access, accesses

_INDEX_POISON = 1 << 40  # far past any table: indexing with it fails


def state_of(vm) -> dict[str, torch.Tensor]:
    names = ("token", "pos", "h", "q", "k_new", "attn_o", "attn_max", "attn_sum", "attn", "kpart", "act", "logits")
    return {"k": vm.cache.k, "v": vm.cache.v, **{n: getattr(vm, n) for n in names}}


def region_views(state: dict[str, torch.Tensor], vm, a: Access) -> list[torch.Tensor]:
    """The slices of `state` (the VM's tensors, or masks shaped like them) that a region names."""
    c, d, splits = vm.config, vm.config.head_dim, vm.program.tiling.kv_splits
    parts = vm.program.tiling.qkv_head_parts
    w, half = d // 2 // parts, d // 2
    if a.buffer in ("token", "pos"):
        return [state[a.buffer]]
    if a.buffer in ("h", "act", "logits"):
        return [state[a.buffer][:, a.lo:a.hi]]
    if a.buffer == "attn":
        return [state[a.buffer][:, a.lo * d:a.hi * d]]
    if a.buffer in ("q", "k_new"):  # (head, part): the part's two runs of dims
        return [state[a.buffer][:, head * d + lo:head * d + lo + w] for i in range(a.lo, a.hi)
                for head, part in [divmod(i, parts)] for lo in (part * w, half + part * w)]
    if a.buffer.startswith("kv"):  # (group, k|v, part)
        layer = int(a.buffer[2:])
        return [state["kv"[slot % 2]][layer, 0, slot // 2, :, lo:lo + w] for i in range(a.lo, a.hi)
                for slot, part in [divmod(i, parts)] for lo in (part * w, half + part * w)]
    if a.buffer == "attn_part":
        views = []
        for i in range(a.lo, a.hi):
            g, s = divmod(i, splits)
            heads = slice(g * c.gqa_group, (g + 1) * c.gqa_group)
            views += [state[n][:, heads, s] for n in ("attn_o", "attn_max", "attn_sum")]
        return views
    if a.buffer == "kpart":
        return [state["kpart"][i // c.hidden_size, :, i % c.hidden_size] for i in range(a.lo, a.hi)]
    if a.buffer == "out":
        return []  # the host's token list, not device state
    raise ValueError(f"unknown buffer {a.buffer}")


def _masks(vm, state, acc, writes_only: bool) -> dict[str, torch.Tensor]:
    masks = {n: torch.zeros(t.shape, dtype=torch.bool) for n, t in state.items()}
    for a in acc:
        if a.write or not writes_only:
            for view in region_views(masks, vm, a):
                view.fill_(True)
    return masks


def _poison_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan") if t.is_floating_point() else _INDEX_POISON)


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    same = a == b
    if a.is_floating_point():
        same |= a.isnan() & b.isnan()
    return ~same


def run_guarded(vm, ins, execute) -> None:
    """`execute(vm, ins)` with undeclared state poisoned; then the real state, plus its writes."""
    acc = accesses(vm.program, ins)
    state = state_of(vm)
    declared, writes = _masks(vm, state, acc, False), _masks(vm, state, acc, True)
    saved = {n: t.clone() for n, t in state.items()}
    for n, t in state.items():
        t.copy_(torch.where(declared[n], saved[n], _poison_like(t)))
    poisoned = {n: t.clone() for n, t in state.items()}
    try:
        execute(vm, ins)
    except IndexError as e:
        raise AssertionError(f"{ins.describe()} read an index it does not declare ({e})") from None
    for n, t in state.items():
        if (_changed(t, poisoned[n]) & ~writes[n]).any():
            raise AssertionError(f"{ins.describe()} wrote {n} outside the regions it declares")
        if t.is_floating_point() and (t.isnan() & writes[n]).any():
            raise AssertionError(f"{ins.describe()} wrote NaN into {n}: it read a region it does not declare")
        t.copy_(torch.where(writes[n], t, saved[n]))
