"""`--runner mono`: greedy decoding in one persistent kernel launch per request.

Prefill comes from the graph runner on the same weights and KV cache; decode steps run in the
monokernel, every token of a request in one launch, tokens streaming to the host as they are chosen.
Speculative drafts are verified in builds of the same program with two to `verify_rows` query
rows, which compute each row as the decode kernel does; where no such build fits (q/k
norm in attention runs one row) they are verified on the graph runner. The kernel draws greedy and
sampled tokens (temperature, top-k up to MAX_TOP_K, top-p among those) from the same random stream
as the graph runner; top-p without top-k, or a larger top-k, decodes on the graph runner.
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


MIN_VERIFY_PAGES = 4  # weight pages a verification build keeps for its ring, at least
VERIFY_ROWS = 4       # past four rows the kernel spills (llama-3.2-1b: 0.4 KB at 4 rows, 4.9 KB at 8)


def verify_rows(program) -> int:
    """Query rows of the widest verification build for the decode `program`: the most (up to VERIFY_ROWS)
    whose activations leave MIN_VERIFY_PAGES pages, with the same tiles (so each row is computed as
    the decode kernel computes it); 0 when none fits."""
    from sonic.mono.kernel import ring_pages
    best = 0
    for rows in range(2, VERIFY_ROWS + 1):
        wide = build_program(program.config, program.tiling, rows=rows)
        if wide.tiling != program.tiling or ring_pages(wide) < MIN_VERIFY_PAGES:
            break
        best = rows
    return best


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
        self.verifiers: dict[int, MonoKernel] = {}  # verification builds by rows, made at first use
        self._verify_limit: int | None = None

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
                     gen: torch.Generator | None = None, stop=None) -> Iterator[int]:
        if not self.in_kernel(sampling):
            yield from super().decode_steps(token, position, n, sampling, gen, stop)
            return
        seed = 0 if sampling.greedy else seed_of(gen or sampling.generator(self.device))
        done = 0
        for token in self.kernel.decode(token, position, n, sampling=sampling, seed=seed, stop=stop):
            done += 1
            yield token
        self.position = position + done

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

    # ---- speculative decoding: verification in the kernel's own arithmetic ----
    def verify_limit(self) -> int:
        """Most tokens one verification epoch takes (0: verification runs on the graph runner)."""
        if self._verify_limit is None:
            self._verify_limit = verify_rows(self.kernel.program)
        return self._verify_limit

    def _verifier(self, rows: int):
        """The kernel that verifies `rows` tokens in one epoch: the decode kernel for one, else a build
        of the same program with that many rows, built at first use (sharing the packed weights and
        the KV cache). A build per row count, since wider builds cost more: one epoch on llama-3.2-1b
        (H200) took 0.98 ms on the decode kernel, 1.05, 1.18 and 1.40-1.57 ms on builds of two, three
        and four rows."""
        if rows == 1:
            return self.kernel
        if rows not in self.verifiers:
            from sonic.mono.launcher import MonoKernel
            decode = self.kernel
            program = build_program(self.config, decode.program.tiling, rows=rows,
                                    shapes=shapes_of(self.packed))
            self.verifiers[rows] = MonoKernel(program, list_schedule(program, decode.schedule.num_sms),
                                              self.packed, self.cache, self.cos, self.sin,
                                              blob=decode.buffers["blob"])
        return self.verifiers[rows]

    def _epochs(self, tokens: list[int], start: int):
        """(kernel, tokens, start) of each verification epoch: as few as the widest build allows,
        near-equal in size, in order."""
        limit = self.verify_limit()
        n = -(-len(tokens) // limit)
        at = 0
        for i in range(n):
            size = len(tokens) // n + (i < len(tokens) % n)
            yield self._verifier(size), tokens[at:at + size], start + at
            at += size

    def verify_argmax(self, tokens: list[int], start: int) -> list[int]:
        if not self.verify_limit():
            return super().verify_argmax(tokens, start)
        return [t for kernel, part, at in self._epochs(tokens, start) for t in kernel.verify(part, at)]

    def verify(self, tokens: list[int], start: int) -> torch.Tensor:
        if not self.verify_limit():
            return super().verify(tokens, start)
        out = []
        for kernel, part, at in self._epochs(tokens, start):
            kernel.verify(part, at)
            out.append(kernel.logits[:len(part)].clone())
        return torch.cat(out)

    def mono_step(self, token: int, position: int) -> torch.Tensor:
        """Logits [V] of one token at `position` through the monokernel (teacher forcing in tests)."""
        return self.kernel.step([token], position)[0]
