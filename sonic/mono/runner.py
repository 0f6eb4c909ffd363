"""`--runner mono`: greedy decoding in one persistent kernel launch per request.

Prefill and verification (speculative decoding) come from the graph runner on the same weights and
KV cache; decode steps run in the monokernel, every token of a request in one launch, tokens
streaming to the host as they are chosen. The kernel draws greedy and sampled tokens (temperature,
top-k up to MAX_TOP_K, top-p among those) from the same random stream as the graph runner; top-p
without top-k, or a larger top-k, decodes on the graph runner.
"""
from __future__ import annotations

from typing import Iterator

import torch

from sonic.engine.runner_graph import GraphRunner
from sonic.engine.sampling import SamplingParams, sample, seed_of
from sonic.mono.builder import build_program, shapes_of
from sonic.mono.instructions import Tiling
from sonic.mono.schedule import list_schedule


def default_tiling(config, num_sms: int = 132) -> Tiling:
    """32 gate/up rows per tile (the fastest of 8..128 on llama-3.2-1b); enough attention splits that
    a group's keys spread over several SMs at long contexts; the merge of the splits in O's staging,
    one wave of instructions fewer per layer; heads in parts (with q/k norm, attention norms the
    heads: Program.norm_in_attention), as many as still fit one wave of QKV tiles on the SMs."""
    return Tiling(gate_up_rows_per_tile=32, kv_splits=4 if config.num_key_value_heads >= 8 else 8,
                  qkv_head_parts=head_parts(config, num_sms), combine_in_o=True)


def head_parts(config, num_sms: int) -> int:
    """2, or 4 where four parts per head are still one wave of QKV tiles and a part keeps 16 rows for
    the tensor cores: qwen3-1.7b 673 -> 705 tok/s; two waves (llama-3.1-8b) were no faster (H200)."""
    heads = config.num_attention_heads + 2 * config.num_key_value_heads
    fits = heads * 4 <= num_sms and config.head_dim % 64 == 0
    return 4 if fits else 2


class MonoRunner(GraphRunner):
    name = "mono"

    def __init__(self, model, max_len: int | None = None, tiling: Tiling | None = None):
        from sonic.mono.launcher import MonoKernel

        super().__init__(model, max_len)
        c = self.config
        num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        tiling = tiling or default_tiling(c, num_sms)
        program = build_program(c, tiling, rows=1, shapes=shapes_of(self.packed))
        self.kernel = MonoKernel(program, list_schedule(program, num_sms), self.packed, self.cache,
                                 self.cos, self.sin)

    def in_kernel(self, sampling: SamplingParams) -> bool:
        from sonic.mono.launcher import samples_in_kernel
        return samples_in_kernel(sampling, self.config.vocab_size)

    def generate(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams) -> Iterator[int]:
        if not self.in_kernel(sampling):
            yield from super().generate(prompt_ids, max_tokens, sampling)
            return
        self.reserve(len(prompt_ids) + max_tokens)
        # As the graph runner: the stream's seed, then the first token, from the request's generator.
        gen = None if sampling.greedy else sampling.generator(self.device)
        seed = 0 if gen is None else seed_of(gen)
        first = int(sample(self.prefill(prompt_ids)[None], sampling, gen)[0])
        yield first
        if max_tokens > 1:
            yield from self.kernel.decode(first, len(prompt_ids), max_tokens - 1, sampling=sampling, seed=seed)

    def decode_steps(self, token: int, position: int, n: int, sampling: SamplingParams,
                     gen: torch.Generator | None = None) -> Iterator[int]:
        if not self.in_kernel(sampling):
            yield from super().decode_steps(token, position, n, sampling, gen)
            return
        seed = 0 if sampling.greedy else seed_of(gen or sampling.generator(self.device))
        yield from self.kernel.decode(token, position, n, sampling=sampling, seed=seed)
        self.position = position + n

    def profile(self, prompt_ids: list[int], max_tokens: int) -> dict:
        """Per-instruction-type times of one greedy run, from a profiling build of the same program."""
        from sonic.mono.launcher import MonoKernel
        from sonic.mono.profile import summarize
        timed = self.kernel
        self.kernel = MonoKernel(timed.program, timed.schedule, self.packed, self.cache, self.cos, self.sin,
                                 profile=True)
        try:
            for _ in self.generate(prompt_ids, max_tokens, SamplingParams()):
                pass
            return summarize(timed.program, self.kernel.profile_stamps())
        finally:
            self.kernel = timed

    def mono_step(self, token: int, position: int) -> torch.Tensor:
        """Logits [V] of one token at `position` through the monokernel (teacher forcing in tests)."""
        return self.kernel.step([token], position)[0]
