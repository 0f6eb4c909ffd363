"""The PyTorch interpreter of the monokernel against the reference model, float32 on CPU."""
import dataclasses

import pytest
import torch

from mono_helpers import (TILINGS, greedy_reference, prefilled_vm, prompt_for, rel_err, single_thread,  # noqa: F401
                          tiny_model)

from sonic.engine.runner_ref import ReferenceRunner
from sonic.engine.sampling import SamplingParams
from sonic.mono.builder import build_program
from sonic.mono.instructions import Wait
from sonic.mono.pyvm import Deadlock, MonoVM
from sonic.mono.schedule import list_schedule

STEPS = 32


@pytest.mark.parametrize("family,tiling", [("llama3", "direct"), ("llama3", "split-k"), ("qwen2", "direct"),
                                           ("qwen2", "split-k"), ("qwen3", "split-k"), ("qwen3-untied-gqa4", "direct"),
                                           ("mistral", "split-k"), ("smollm2", "direct"), ("llama3", "parts"),
                                           ("qwen2", "parts"), ("mistral", "parts"), ("qwen3", "parts"),
                                           ("qwen3-untied-gqa4", "parts")])
def test_greedy_tokens_and_logits_match_the_reference(family, tiling):
    """32 tokens in one launch: Llama 3 (RoPE scaling), Qwen2 (bias), Qwen3 (q/k norm, in attention
    with heads in parts), Mistral (sliding window of 8, passed by this run), SmolLM2 (tied, 9 heads)."""
    model = tiny_model(family)
    prompt = prompt_for(model.config)
    want_tokens, want_logits = greedy_reference(model, prompt, STEPS)
    vm, first = prefilled_vm(model, TILINGS[tiling], prompt, STEPS, eos=())
    tokens = [first] + vm.decode(first, len(prompt), STEPS - 1)
    assert tokens == want_tokens
    assert rel_err(torch.cat(vm.logits_history), want_logits) < 1e-4
    assert int(vm.pos[0]) == len(prompt) + STEPS - 1


def test_any_sm_order_gives_bit_identical_logits():
    """Fixed-order reductions: random interleavings of the queues change nothing, not even the last bit."""
    model = tiny_model("qwen3")
    prompt = prompt_for(model.config)
    for tiling in ("split-k", "parts"):
        runs = []
        for order_seed in (None, 1, 2):
            vm, first = prefilled_vm(model, TILINGS[tiling], prompt, 8, num_sms=5, order_seed=order_seed, eos=())
            vm.decode(first, len(prompt), 6)
            runs.append(torch.cat(vm.logits_history))
        assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_counters_carry_over_launches():
    """Two launches continue the same counters (never reset) and give the tokens of one launch."""
    model = tiny_model("llama3")
    prompt = prompt_for(model.config)
    want, _ = greedy_reference(model, prompt, 12)
    vm, first = prefilled_vm(model, TILINGS["direct"], prompt, 12, eos=())
    part = vm.decode(first, len(prompt), 4)
    rest = vm.decode(part[-1], len(prompt) + 4, 7)
    assert [first] + part + rest == want
    sample = vm.program.counter_id("sample")
    assert vm.counters[sample] == 11 and vm.epochs_done == 11


def test_eos_stops_the_launch_after_that_token():
    model = tiny_model("llama3")
    prompt = prompt_for(model.config)
    want, _ = greedy_reference(model, prompt, 10)
    stop = want[5]
    vm, first = prefilled_vm(model, TILINGS["direct"], prompt, 10, eos=(stop,))
    got = vm.decode(first, len(prompt), 9)
    assert got == want[1:want.index(stop, 1) + 1]
    assert vm.epochs_done == len(got)


def test_the_host_can_stop_the_launch():
    model = tiny_model("qwen3")
    prompt = prompt_for(model.config)
    want, _ = greedy_reference(model, prompt, 10)
    vm, first = prefilled_vm(model, TILINGS["split-k"], prompt, 10, eos=())
    seen = []
    got = vm.decode(first, len(prompt), 9, stop=lambda tokens: seen.append(tokens[0]) or len(seen) == 3)
    assert got == seen == want[1:4] and vm.epochs_done == 3
    assert vm.decode(got[-1], len(prompt) + 3, 2) == want[4:6]  # the next launch carries on


@pytest.mark.parametrize("family,rows", [("llama3", 2), ("qwen2", 5), ("qwen3", 8), ("mistral", 8)])
def test_verification_rows_match_the_reference(family, rows):
    """M query rows in one epoch: each row as the reference computes it one token at a time."""
    model = tiny_model(family)
    prompt = prompt_for(model.config, n=6)
    drafts = prompt_for(model.config, n=rows, seed=9)
    ref = ReferenceRunner(model)
    ref.reserve(len(prompt) + rows)
    ref.prefill(prompt)
    want = ref.verify(drafts, len(prompt))
    vm, _ = prefilled_vm(model, TILINGS["split-k"], prompt, rows, rows=rows, eos=())
    got = vm.verify(drafts, len(prompt))
    assert rel_err(got, want) < 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert vm.out[-1] == want.argmax(-1).tolist()


def test_sampling_is_seeded_and_respects_top_k():
    model = tiny_model("llama3")
    prompt = prompt_for(model.config)
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.9, seed=3)
    runs = []
    for _ in range(2):
        vm, first = prefilled_vm(model, TILINGS["direct"], prompt, 12, sampling=params, eos=())
        runs.append(vm.decode(first, len(prompt), 10))
        for logits, token in zip(vm.logits_history, runs[-1]):
            assert token in torch.topk(logits[0], 20).indices.tolist()
    assert runs[0] == runs[1]
    greedy, _ = prefilled_vm(model, TILINGS["direct"], prompt, 12, eos=())
    assert runs[0] != greedy.decode(first, len(prompt), 10)


def test_sampling_draws_what_the_triton_sampler_draws():
    """Each epoch's token is the graph runner's Gumbel-max draw over the same filtered logits, at the
    request's seed and the epoch's step: one stream for every runner."""
    from sonic.engine.sampling import filter_logits
    from sonic.kernels.triton.lm_head_sample import gumbel_argmax
    model = tiny_model("qwen2")
    prompt = prompt_for(model.config)
    for params in (SamplingParams(temperature=0.8, seed=11), SamplingParams(temperature=1.3, top_k=5, seed=2)):
        vm, first = prefilled_vm(model, TILINGS["parts"], prompt, 12, sampling=params, eos=())
        tokens = vm.decode(first, len(prompt), 10)
        for step, (logits, token) in enumerate(zip(vm.logits_history, tokens)):
            out = torch.empty(1, dtype=torch.int64)
            gumbel_argmax(filter_logits(logits, params), torch.tensor([vm.seed]), torch.tensor([step]), out)
            assert token == int(out[0])


def _vm_with_gate_up_count(model, delta: int) -> MonoVM:
    program = build_program(model.config, TILINGS["direct"])
    bad = list(program.instructions)
    i = next(k for k, ins in enumerate(bad) if ins.op.name == "GATE_UP")
    w = bad[i].waits[0]
    bad[i] = dataclasses.replace(bad[i], waits=(Wait(w.counter, w.count + delta),))
    program = program.with_instructions(bad)
    runner = ReferenceRunner(model)
    runner.reserve(16)
    runner.prefill([1, 2, 3])
    # Eight SMs in a random order: some sweep reaches a GATE_UP before the last O_PROJ tile.
    return MonoVM(model, program, list_schedule(program, 8), runner.cache, order_seed=0, eos=())


def test_a_wait_for_too_many_signals_deadlocks_with_an_error():
    with pytest.raises(Deadlock, match="no SM can run"):
        _vm_with_gate_up_count(tiny_model("llama3"), +1).decode(4, 3, 2)


def test_a_wait_for_too_few_signals_is_caught_when_it_passes_early():
    with pytest.raises(AssertionError, match="GATE_UP.* sees counter L0.o satisfied before epoch \\d finished"):
        _vm_with_gate_up_count(tiny_model("llama3"), -1).decode(4, 3, 2)


@pytest.mark.parametrize("family,tiling,rows", [("qwen3", "split-k", 1), ("qwen2", "direct", 1),
                                                ("mistral", "split-k", 3), ("qwen2", "parts", 1), ("llama3", "parts", 2),
                                                ("qwen3", "parts", 1)])
def test_instructions_touch_only_what_they_declare(family, tiling, rows):
    """Under the guard every undeclared region is poisoned: the results still match the reference."""
    model = tiny_model(family)
    prompt = prompt_for(model.config, n=9)
    if rows == 1:
        want, _ = greedy_reference(model, prompt, 4)
        vm, first = prefilled_vm(model, TILINGS[tiling], prompt, 4, guard=True, eos=())
        assert [first] + vm.decode(first, len(prompt), 3) == want
    else:
        ref = ReferenceRunner(model)
        ref.reserve(len(prompt) + rows)
        ref.prefill(prompt)
        vm, _ = prefilled_vm(model, TILINGS[tiling], prompt, rows, rows=rows, guard=True, eos=())
        assert rel_err(vm.verify(prompt[:rows], len(prompt)), ref.verify(prompt[:rows], len(prompt))) < 1e-4


@pytest.mark.parametrize("op,buffer,message", [("ATTN_PARTIAL", "pos", "read an index it does not declare"),
                                               ("ATTN_COMBINE", "attn_part", "read a region it does not declare"),
                                               ("GATE_UP", "act", "wrote act outside the regions it declares")])
def test_the_guard_catches_an_undeclared_access(monkeypatch, op, buffer, message):
    import sonic.mono.guard as guard
    real = guard.accesses

    def forgetful(program, ins):
        acc = real(program, ins)
        return [a for a in acc if not (ins.op.name == op and a.buffer == buffer)]

    monkeypatch.setattr(guard, "accesses", forgetful)
    model = tiny_model("llama3")
    prompt = prompt_for(model.config)
    vm, first = prefilled_vm(model, TILINGS["direct"], prompt, 4, guard=True, eos=())
    with pytest.raises(AssertionError, match=message):
        vm.decode(first, len(prompt), 2)


def test_a_short_verification_padded_with_its_last_token_gives_the_same_rows():
    """The CUDA runner pads a batch of m < rows tokens by repeating the last token at its position:
    in the interpreter (access-checked) the real rows are the unpadded ones, the padding a copy."""
    model = tiny_model("llama3")
    prompt = prompt_for(model.config, n=6)
    drafts = prompt_for(model.config, n=2, seed=9)
    two, _ = prefilled_vm(model, TILINGS["split-k"], prompt, 4, rows=2, eos=())
    want = two.verify(drafts, len(prompt))
    four, _ = prefilled_vm(model, TILINGS["split-k"], prompt, 4, rows=4, guard=True, eos=())
    at = len(prompt)
    four.token.copy_(torch.tensor(drafts + [drafts[-1]] * 2))
    four.pos.copy_(torch.tensor([at, at + 1, at + 1, at + 1]))
    four.run(1)
    got = four.logits_history[-1]
    assert rel_err(got[:2], want) < 1e-5 and torch.equal(got[:2].argmax(-1), want.argmax(-1))
    assert torch.equal(got[2], got[1]) and torch.equal(got[3], got[1])
