"""PyTorch semantics of each opcode, one function per instruction type: what the CUDA kernel computes.

Each function touches only the regions `access.py` declares for the instruction. Weights come from
the tile-packed blob (the instruction's own stream); norms, biases and embedding rows from the
packed model. The residual and logits are fp32; partial results are reduced in a fixed order (KV
splits and k splits in index order), so a run is deterministic whatever the SM interleaving.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sonic.engine.gumbel import gumbel_argmax
from sonic.engine.sampling import filter_logits
from sonic.mono.instructions import Instruction, Op
from sonic.mono.tiles import blob_tile, head_parts, qkv_part_dims, qkv_slot_rows


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As the reference: normalise in fp32, scale in the working dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(weight.dtype)


def _matvec(vm, ins: Instruction, x: torch.Tensor) -> torch.Tensor:
    return x @ blob_tile(vm.blob, vm.program, ins).T


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def embed(vm, ins: Instruction) -> None:
    vm.h[:, ins.tile_begin:ins.tile_end] = vm.packed.embed[vm.token, ins.tile_begin:ins.tile_end].float()


def normed_rotated(vm, ins: Instruction, head: torch.Tensor, is_q: bool) -> torch.Tensor:
    """q/k norm (when the model has it) and RoPE at each row's position of whole heads [rows, D]."""
    c, layer = vm.config, vm.packed.layers[ins.layer]
    if layer.q_norm is not None:
        head = rms_norm(head, layer.q_norm if is_q else layer.k_norm, c.rms_norm_eps)
    return _rotate(head, vm.cos[vm.pos].to(head.dtype), vm.sin[vm.pos].to(head.dtype))


def qkv_rope(vm, ins: Instruction) -> None:
    """A part of a head holds whole RoPE pairs, so it rotates on its own. q/k norm needs the whole
    head: with parts (Program.norm_in_attention) q and k are left raw, for attention to norm."""
    c, layer, d = vm.config, vm.packed.layers[ins.layer], vm.config.head_dim
    raw = vm.program.norm_in_attention
    y = _matvec(vm, ins, rms_norm(vm.h, layer.attn_norm, c.rms_norm_eps))
    dims = torch.tensor(qkv_part_dims(d, ins.split, head_parts(ins)))
    width = len(dims)
    for i, slot in enumerate(range(ins.tile_begin, ins.tile_end)):
        head = y.new_zeros(y.shape[0], d)
        head[:, dims] = y[:, i * width:(i + 1) * width]
        if layer.b_qkv is not None:
            head = head + layer.b_qkv[slice(*qkv_slot_rows(c, ins.group, slot))]
        if slot == c.gqa_group + 1:  # v: straight into the cache
            vm.cache.v[ins.layer, 0, ins.group, vm.pos[:, None], dims] = head[:, dims]
            continue
        is_q = slot < c.gqa_group
        if not raw:
            head = normed_rotated(vm, ins, head, is_q)
        if is_q:
            q_head = ins.group * c.gqa_group + slot
            vm.q[:, q_head * d + dims] = head[:, dims]
        elif raw:
            vm.k_new[:, ins.group * d + dims] = head[:, dims]
        else:
            vm.cache.k[ins.layer, 0, ins.group, vm.pos[:, None], dims] = head[:, dims]


def new_k(vm, ins: Instruction, group: int) -> torch.Tensor:
    """Group `group`'s k row at the position [rows, D], normed and rotated from k_new."""
    d = vm.config.head_dim
    return normed_rotated(vm, ins, vm.k_new[:, group * d:(group + 1) * d], is_q=False)


def key_range(vm, row: int, split: int) -> tuple[int, int]:
    """Positions split `split` of row `row` attends to: the visible keys cut into near-equal parts."""
    pos, window = int(vm.pos[row]), vm.config.sliding_window
    lo, hi = (max(0, pos - window + 1) if window else 0), pos + 1
    chunk = -(-(hi - lo) // vm.program.tiling.kv_splits)
    start = min(lo + split * chunk, hi)
    return start, min(start + chunk, hi)


def attn_partial(vm, ins: Instruction) -> None:
    c, d = vm.config, vm.config.head_dim
    heads = slice(ins.tile_begin, ins.tile_end)
    for row in range(vm.program.rows):
        a, b = key_range(vm, row, ins.split)
        if a == b:  # an empty split: contributes nothing to the merge
            vm.attn_o[row, heads, ins.split] = 0
            vm.attn_max[row, heads, ins.split] = float("-inf")
            vm.attn_sum[row, heads, ins.split] = 0
            continue
        q = vm.q[row].view(c.num_attention_heads, d)[heads]
        k = vm.cache.k[ins.layer, 0, ins.group, a:b].float()
        if vm.program.norm_in_attention:  # q raw; the key at the position is not in the cache yet
            q = normed_rotated(vm, ins, q, is_q=True)  # [heads, D]: one row (the builder's rule)
            if a <= int(vm.pos[row]) < b:
                k = k.clone()  # a copy: the cache itself is written by the first O tile
                k[int(vm.pos[row]) - a] = new_k(vm, ins, ins.group)[row].float()
        q = q.float()
        v = vm.cache.v[ins.layer, 0, ins.group, a:b].float()
        scores = (q @ k.T) * d ** -0.5                 # [gqa, keys]
        best = scores.amax(dim=-1)
        p = torch.exp(scores - best[:, None])
        vm.attn_o[row, heads, ins.split] = p @ v
        vm.attn_max[row, heads, ins.split] = best
        vm.attn_sum[row, heads, ins.split] = p.sum(-1)


def merged_attention(vm, h0: int, h1: int) -> torch.Tensor:
    """The attention output [rows, (h1 - h0) * D] of q heads h0..h1, their KV splits merged in split
    order (deterministic), in the working dtype."""
    d, heads = vm.config.head_dim, slice(h0, h1)
    best = vm.attn_max[:, heads].amax(dim=-1)           # [rows, heads]
    out = torch.zeros(vm.program.rows, h1 - h0, d)
    total = torch.zeros(vm.program.rows, h1 - h0)
    for s in range(vm.program.tiling.kv_splits):
        scale = torch.exp(vm.attn_max[:, heads, s] - best)
        out += scale[..., None] * vm.attn_o[:, heads, s]
        total += scale * vm.attn_sum[:, heads, s]
    return (out / total[..., None]).to(vm.attn.dtype).reshape(vm.program.rows, -1)


def attn_combine(vm, ins: Instruction) -> None:
    d = vm.config.head_dim
    vm.attn[:, ins.tile_begin * d:ins.tile_end * d] = merged_attention(vm, ins.tile_begin, ins.tile_end)


def _into_residual(vm, ins: Instruction, y: torch.Tensor) -> None:
    if vm.program.tiling.k_splits == 1:
        vm.h[:, ins.tile_begin:ins.tile_end] += y.float()
    else:
        vm.kpart[ins.split, :, ins.tile_begin:ins.tile_end] = y.float()


def o_proj(vm, ins: Instruction) -> None:
    if vm.program.tiling.combine_in_o:  # merge the splits of the heads the k range covers
        d = vm.config.head_dim
        h0, h1 = ins.k_begin // d, -(-ins.k_end // d)
        x = merged_attention(vm, h0, h1)[:, ins.k_begin - h0 * d:ins.k_end - h0 * d]
    else:
        x = vm.attn[:, ins.k_begin:ins.k_end]
    _into_residual(vm, ins, _matvec(vm, ins, x))
    if vm.program.is_k_writer(ins):  # after every split has read the cache: the new k rows
        for g in range(vm.config.num_key_value_heads):
            vm.cache.k[ins.layer, 0, g, vm.pos] = new_k(vm, ins, g)


def down_proj(vm, ins: Instruction) -> None:
    _into_residual(vm, ins, _matvec(vm, ins, vm.act[:, ins.k_begin:ins.k_end]))


def residual(vm, ins: Instruction) -> None:
    rows = slice(ins.tile_begin, ins.tile_end)
    acc = vm.kpart[0, :, rows].clone()
    for s in range(1, ins.k_end):
        acc += vm.kpart[s, :, rows]
    vm.h[:, rows] += acc


def gate_up(vm, ins: Instruction) -> None:
    layer, n = vm.packed.layers[ins.layer], ins.tile_end - ins.tile_begin
    y = _matvec(vm, ins, rms_norm(vm.h, layer.mlp_norm, vm.config.rms_norm_eps))
    vm.act[:, ins.tile_begin:ins.tile_end] = F.silu(y[:, :n]) * y[:, n:]


def lm_head(vm, ins: Instruction) -> None:
    x = rms_norm(vm.h, vm.packed.final_norm, vm.config.rms_norm_eps)
    vm.logits[:, ins.tile_begin:ins.tile_end] = _matvec(vm, ins, x).float()


def sample_token(vm, ins: Instruction) -> None:
    """Token choice (greedy, or Gumbel-max over the filtered logits with the epoch's step of the
    request's stream), then what the kernel does before the next epoch: position on, token out, EOS."""
    if vm.sampling.greedy:
        chosen = vm.logits.argmax(dim=-1)
    else:
        chosen = gumbel_argmax(filter_logits(vm.logits, vm.sampling), vm.seed, vm.sample_step)
        vm.sample_step += 1
    vm.token.copy_(chosen)
    vm.pos += 1
    vm.out.append(chosen.tolist())
    vm.logits_history.append(vm.logits.clone())
    if any(int(t) in vm.eos for t in chosen) or (vm.stop_requested and vm.stop_requested(vm.out[-1])):
        vm.done = True


OPS = {Op.EMBED: embed, Op.QKV_ROPE: qkv_rope, Op.ATTN_PARTIAL: attn_partial, Op.ATTN_COMBINE: attn_combine,
       Op.O_PROJ: o_proj, Op.GATE_UP: gate_up, Op.DOWN_PROJ: down_proj, Op.RESIDUAL: residual,
       Op.LM_HEAD: lm_head, Op.SAMPLE: sample_token}
