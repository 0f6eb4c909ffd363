"""One compiled monokernel on one GPU: its device buffers, its counters (never reset) and launches.

`decode` runs many epochs (tokens) in one launch and yields each token as the kernel writes it to
host-mapped memory; closing the generator early raises the host's stop flag, which the kernel obeys
after the token in flight. `step` runs one epoch with tokens the caller chooses (teacher forcing,
verification) and returns the logits.
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch

from sonic.engine.kv_cache import KVCache
from sonic.engine.gumbel import reciprocal_temperature
from sonic.engine.packed import PackedModel
from sonic.engine.sampling import SamplingParams
from sonic.errors import SonicError
from sonic.mono.instructions import Program
from sonic.mono.kernel import MAX_TOP_K, Params, compile_program, unsupported
from sonic.mono.layout import encode_instructions, encode_schedule
from sonic.mono.schedule import Schedule
from sonic.mono.tiles import pack_tiles

PROFILE_STAMPS = 11
TIMEOUT_S = 5.0  # a wait longer than this is a bug: every CTA stops and the host raises
ERROR_TIMEOUT = 1


def small_weights(packed: PackedModel) -> torch.Tensor:
    """Per layer, one block: attention norm, MLP norm, [QKV bias], [q norm, k norm] (the kernel's
    SMALL_* offsets)."""
    blocks = []
    for layer in packed.layers:
        parts = [layer.attn_norm, layer.mlp_norm] + [t for t in (layer.b_qkv, layer.q_norm, layer.k_norm)
                                                     if t is not None]
        blocks.append(torch.cat([t.reshape(-1) for t in parts]))
    return torch.stack(blocks).contiguous()


def effective_top_k(sampling: SamplingParams, vocab_size: int) -> int:
    """The top-k that filters anything (filter_logits: 0 or k >= the vocabulary is off)."""
    return sampling.top_k if 0 < sampling.top_k < vocab_size else 0


def samples_in_kernel(sampling: SamplingParams, vocab_size: int) -> bool:
    """Greedy, temperature alone, or with top-k up to MAX_TOP_K (and top-p among those): the kernel
    draws them. Top-p over the whole vocabulary would need it sorted every token."""
    if sampling.greedy:
        return True
    k = effective_top_k(sampling, vocab_size)
    return k <= MAX_TOP_K and (k > 0 or sampling.top_p == 1.0)


def check_block_fits(fn, threads: int, model: str) -> None:
    """A cooperative launch of blocks too big for an SM fails with a driver error that names neither
    the cause nor the way out: say both."""
    from sonic.kernels.cuda import driver
    most, registers = driver.block_limits(fn)
    if most < threads:
        raise SonicError(f"the monokernel for {model} was compiled with {registers} registers per thread, "
                         f"too many for its {threads} threads ({most} fit): use --runner graph")


class MonoKernel:
    def __init__(self, program: Program, schedule: Schedule, packed: PackedModel, cache: KVCache,
                 cos: torch.Tensor, sin: torch.Tensor, profile: bool = False,
                 defines: dict[str, int] | None = None, blob: torch.Tensor | None = None):
        """`blob`: the packed tiles of another kernel of the same tiling (a verification kernel
        shares its decode kernel's weights instead of packing a second copy)."""
        from sonic.kernels.cuda import driver

        reason = unsupported(program)
        if reason:
            raise SonicError(f"the monokernel cannot run {program.config.name or 'this model'}: {reason}; "
                             "use --runner graph")
        if packed.embed.dtype != torch.bfloat16:
            raise SonicError("the monokernel runs bf16 weights: use --dtype bfloat16 or --runner graph")
        self.program, self.schedule, self.cache = program, schedule, cache
        dev = packed.embed.device
        self.device_index = dev.index or 0
        c, m, t = program.config, program.rows, program.tiling
        self.module = driver.Module(compile_program(program, defines), self.device_index)
        layout = torch.zeros(5, dtype=torch.int32, device=dev)  # the launch's shape, as compiled
        driver.launch(self.module.function("mono_layout"), 1, 1, 0, _pointer_params(layout), self.device_index,
                      pdl=False)
        self.threads, self.shared_bytes, self.num_pages, lm_tiles, top_k = layout.tolist()
        assert top_k == MAX_TOP_K, "kernel.MAX_TOP_K differs from sample.cuh"
        self.fn = self.module.function("mono_decode", self.shared_bytes)
        check_block_fits(self.fn, self.threads, program.config.name or "this model")
        starts, items = encode_schedule(schedule)
        keep = {
            "instructions": torch.from_numpy(encode_instructions(program.instructions).view(np.uint8)).to(dev),
            "queue_start": torch.from_numpy(starts.view(np.int32)).to(dev),
            "queue": torch.from_numpy(items.view(np.int32)).to(dev),
            "blob": pack_tiles(packed, program) if blob is None else blob,
            "smalls": small_weights(packed), "embed": packed.embed,
            "final_norm": packed.final_norm, "cos": cos.contiguous(), "sin": sin.contiguous(),
            "k_cache": cache.k, "v_cache": cache.v,
            "h": torch.zeros(m, c.hidden_size, 2, device=dev),  # a value and its flag (common.cuh: LL_H)
            "q": torch.zeros(m, c.q_size, dtype=torch.bfloat16, device=dev),
            "k_new": torch.zeros(m, c.kv_size, dtype=torch.bfloat16, device=dev),
            # Two floats per value: a value and its flag when O reads them as they come (attention.cuh)
            "attn_o": torch.zeros(m, c.num_attention_heads, t.kv_splits, c.head_dim, 2, device=dev),
            "attn_max": torch.zeros(m, c.num_attention_heads, t.kv_splits, 2, device=dev),
            "attn_sum": torch.zeros(m, c.num_attention_heads, t.kv_splits, 2, device=dev),
            "attn": torch.zeros(m, c.q_size, dtype=torch.bfloat16, device=dev),
            "kpart": torch.zeros(t.k_splits, m, c.hidden_size, device=dev),
            # two bf16 values and a flag per 64-bit word (common.cuh: LL_ACT), or bf16 values
            "act": torch.zeros(m, c.intermediate_size, 2, dtype=torch.bfloat16, device=dev),
            "logits": torch.zeros(m, c.vocab_size, device=dev),
            "part_val": torch.zeros(m, lm_tiles, device=dev),
            "part_idx": torch.zeros(m, lm_tiles, dtype=torch.int32, device=dev),
            "cand_val": torch.zeros(m, lm_tiles, MAX_TOP_K, device=dev),
            "cand_idx": torch.zeros(m, lm_tiles, MAX_TOP_K, dtype=torch.int32, device=dev),
            "token": torch.zeros(m, dtype=torch.int32, device=dev),
            "pos": torch.zeros(m, dtype=torch.int32, device=dev),
            "counters": torch.zeros(len(program.counters), dtype=torch.int64, device=dev),
            "stop_epoch": torch.zeros(1, dtype=torch.int64, device=dev),
            "error": torch.zeros(4, dtype=torch.int32, device=dev),
            "abort_flag": torch.zeros(1, dtype=torch.int32, device=dev),
        }
        if profile:  # per instruction, in the launch's last epoch (ns): PROFILE_STAMPS of monokernel.cu
            keep["profile"] = torch.zeros(len(program.instructions), PROFILE_STAMPS, dtype=torch.int64, device=dev)
        self.buffers = keep
        self.max_epochs = cache.max_len
        # Host-mapped: tokens [max_epochs][rows], then the epoch count and the host's stop flag.
        self.host = driver.HostMapped(4 * (self.max_epochs * m + 2), self.device_index)
        self.out_tokens = self.host.view(np.int32, 0, self.max_epochs * m)
        self.out_count = self.host.view(np.int32, 4 * self.max_epochs * m, 1)
        self.host_stop = self.host.view(np.int32, 4 * (self.max_epochs * m + 1), 1)
        self.epochs = 0  # completed: the counters stand at epochs * count
        self.timeout_s = TIMEOUT_S

    @property
    def logits(self) -> torch.Tensor:
        return self.buffers["logits"]

    def profile_stamps(self) -> torch.Tensor | None:
        """[instructions, PROFILE_STAMPS] globaltimer stamps (ns) of the last epoch run: the wait
        began, inputs ready, inputs staged, matvec done, done (staged = done = ready without a matvec),
        when the producer issued the copy of the instruction's last weight page, the ns the matvec
        waited for pages, when thread 0 ended the op (before the barrier and the release), and the ns the
        producer waited for a free page, for its copies in flight and for releases (the pause) while
        issuing the weight pages."""
        stamps = self.buffers.get("profile")
        return None if stamps is None else stamps.cpu()

    def _params(self, num_epochs: int, stop_at_eos: bool, sampling: SamplingParams, seed: int,
                step: int = 0) -> Params:
        p = Params()
        for name, tensor in self.buffers.items():
            setattr(p, name, tensor.data_ptr())
        base = self.host.device_ptr
        p.out_tokens, p.out_count = base, base + 4 * self.max_epochs * self.program.rows
        p.host_stop = p.out_count + 4
        p.first_epoch, p.num_epochs = self.epochs + 1, num_epochs
        p.timeout_ns, p.max_len = max(1, int(self.timeout_s * 1e9)), self.cache.max_len
        p.stop_at_eos = int(stop_at_eos)
        if not sampling.greedy:  # the launch's first epoch is step `step` of the request's stream
            p.inv_temperature = reciprocal_temperature(sampling.temperature)
            p.top_k = effective_top_k(sampling, self.program.config.vocab_size)
            p.top_p, p.seed, p.sample_step = sampling.top_p, seed, step
        else:
            p.top_p = 1.0
        return p

    def _launch(self, num_epochs: int, stop_at_eos: bool = False, sampling: SamplingParams = SamplingParams(),
                seed: int = 0, step: int = 0) -> None:
        from sonic.kernels.cuda import driver
        if not 1 <= num_epochs <= self.max_epochs:
            raise SonicError(f"a launch of {num_epochs} tokens is outside 1..{self.max_epochs}")
        self.out_count[0], self.host_stop[0] = 0, 0
        self.buffers["stop_epoch"].fill_(self.epochs + num_epochs)
        # kept alive until the launch is done
        self._running = self._params(num_epochs, stop_at_eos, sampling, seed, step)
        driver.launch(self.fn, self.schedule.num_sms, self.threads, self.shared_bytes, self._running,
                      self.device_index, pdl=False, cooperative=True)

    def _finish(self) -> int:
        """Waits for the launch; returns the epochs it ran, or raises what the kernel reported."""
        torch.cuda.current_stream(self.device_index).synchronize()
        ran = int(self.out_count[0])
        error = self.buffers["error"].tolist()
        if error[0] == ERROR_TIMEOUT:
            # Every CTA has left: start the counters afresh so the kernel stays usable.
            for name in ("counters", "error", "abort_flag", "h", "attn_o", "attn_max", "attn_sum", "act"):  # flags too
                self.buffers[name].zero_()
            self.epochs = 0
            ins = self.program.instructions[error[1]]
            raise SonicError(f"the monokernel stopped: {ins.describe()} in token {error[2]} waited more than "
                             f"{self.timeout_s:g} s on counter {self.program.counters[error[3]]}; "
                             "use --runner graph and report this")
        self.epochs += ran
        return ran

    def step(self, tokens: list[int], start: int) -> torch.Tensor:
        """Logits [rows, V] of `tokens` at positions start.. in one epoch (writes their K/V)."""
        m = self.program.rows
        if len(tokens) != m:
            raise ValueError(f"this kernel runs {m} rows per step, got {len(tokens)} tokens")
        self.verify(tokens, start)
        return self.logits.clone()

    def verify(self, tokens: list[int], start: int) -> list[int]:
        """One epoch of up to `rows` tokens at positions start..: the greedy choice after each (their
        logits stay in `logits[:len(tokens)]` until the next launch). Missing rows repeat the last
        token at its position, so they write the same K/V bits there and nothing past it."""
        m, rows = len(tokens), self.program.rows
        if not 1 <= m <= rows:
            raise ValueError(f"this kernel verifies 1 to {rows} tokens, got {m}")
        pad = rows - m
        dev = self.buffers["token"].device
        self.buffers["token"].copy_(torch.tensor(list(tokens) + [tokens[-1]] * pad, dtype=torch.int32, device=dev))
        self.buffers["pos"].copy_(torch.tensor(list(range(start, start + m)) + [start + m - 1] * pad,
                                               dtype=torch.int32, device=dev))
        self._launch(1)
        self._finish()
        return [int(t) for t in self.out_tokens[:m]]

    def decode(self, token: int, position: int, n: int, stop_at_eos: bool = False,
               sampling: SamplingParams = SamplingParams(), seed: int = 0, step: int = 0,
               stop=None) -> Iterator[int]:
        """The tokens after `token` at `position`, `n` of them, from one launch: greedy, or drawn with
        `sampling` from stream `seed` (engine/gumbel.py), the first of them at step `step`. With
        `stop_at_eos` the launch ends after the model's first EOS token. `stop`, if given, is called
        after each token is taken: True ends the launch after the token in flight, which still yields."""
        if self.program.rows != 1:
            raise ValueError("decode runs a one-row kernel")
        if not samples_in_kernel(sampling, self.program.config.vocab_size):
            raise ValueError(f"the kernel does not sample with {sampling}")
        self.buffers["token"].fill_(token)
        self.buffers["pos"].fill_(position)
        self._launch(n, stop_at_eos, sampling, seed, step)
        stream = torch.cuda.current_stream(self.device_index)
        seen, finished = 0, False
        try:
            while True:
                landed = int(self.out_count[0])
                if landed == seen and stream.query():
                    finished = True  # before _finish: an error it raises must not finish twice
                    landed = self._finish()
                for i in range(seen, landed):
                    yield int(self.out_tokens[i])
                    if stop is not None and not self.host_stop[0] and stop():
                        self.host_stop[0] = 1
                seen = landed
                if finished:
                    return
                time.sleep(20e-6)
        finally:
            if not finished:  # the caller stopped early: the kernel ends after the token in flight
                self.host_stop[0] = 1
                self._finish()


def _pointer_params(tensor: torch.Tensor):
    import ctypes

    class One(ctypes.Structure):
        _fields_ = [("ptr", ctypes.c_uint64)]
    return One(tensor.data_ptr())
