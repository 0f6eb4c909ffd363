"""The schedule validator and the discrete-event simulation: valid programs pass, planted bugs fail."""
import dataclasses

import pytest

from mono_helpers import TILINGS, single_thread, tiny  # noqa: F401

from sonic.mono.builder import build_program
from sonic.mono.instructions import Op, Wait
from sonic.mono.schedule import Schedule, list_schedule
from sonic.mono.simulate import simulate
from sonic.mono.validate import (InvalidSchedule, check_counters, check_graph, check_hazards, check_queues,
                                 check_signal_order, validate)
from sonic.presets import PRESETS


def _program(family="llama3", tiling="split-k", rows=1):
    return build_program(tiny(family), TILINGS[tiling], rows=rows)


def _first(program, op):
    return next(i for i, ins in enumerate(program.instructions) if ins.op == op)


def _replace(program, index, **changes):
    instrs = list(program.instructions)
    instrs[index] = dataclasses.replace(instrs[index], **changes)
    return program.with_instructions(instrs)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral", "smollm2", "qwen3-untied-gqa4"])
@pytest.mark.parametrize("tiling", sorted(TILINGS))
def test_built_programs_are_valid_and_simulate_without_deadlock(family, tiling):
    program = _program(family, tiling, rows=3)
    for sms in (1, 5, 16):
        schedule = list_schedule(program, sms)
        validate(program, schedule, epochs=3)
        for seed in range(3):
            simulate(program, schedule, epochs=3, seed=seed)


@pytest.mark.parametrize("family", ["qwen3", "qwen3-untied-gqa4"])
def test_q_k_norm_in_attention_is_valid(family):
    """One row, heads in parts: attention reads the raw k and the cache, the first O tile writes the
    cache after every split has read it."""
    program = _program(family, "parts", rows=1)
    assert program.norm_in_attention
    for sms in (1, 5, 16):
        schedule = list_schedule(program, sms)
        validate(program, schedule, epochs=3)
        simulate(program, schedule, epochs=3, seed=sms)


def test_presets_pass_on_132_sms():
    program = build_program(PRESETS["smollm2-135m"])
    validate(program, list_schedule(program, 132))
    program = build_program(PRESETS["llama-3.2-1b"], rows=8)
    validate(program, list_schedule(program, 132), hazards=False)


def test_a_missing_wait_is_a_read_before_write():
    program = _program()
    i = _first(program, Op.GATE_UP)
    bad = _replace(program, i, waits=())
    with pytest.raises(InvalidSchedule, match=r"GATE_UP.* reads h\[0:64\] without waiting for"):
        check_hazards(bad)
    with pytest.raises(InvalidSchedule, match="before .* is done with a buffer"):
        for seed in range(5):
            simulate(bad, list_schedule(bad, 4), seed=seed)


def test_a_missing_wait_across_epochs_is_caught():
    """EMBED without its wait on the previous sampling would read the token before it is chosen and
    overwrite h while the previous epoch still works on it."""
    program = _program()
    bad = _replace(program, _first(program, Op.EMBED), waits=())
    with pytest.raises(InvalidSchedule, match=r"EMBED.*\(epoch 1\) (reads token|writes h).* without waiting for .*\(epoch 0\)"):
        check_hazards(bad)


def test_a_signal_that_can_run_ahead_into_the_next_epoch_is_caught():
    """Without EMBED's wait, nothing orders epoch 1 after epoch 0: its SAMPLE could signal first, and
    `sample >= 1` would be reached before epoch 0's token is chosen."""
    program = _program()
    check_signal_order(program, epochs=3)
    bad = _replace(program, _first(program, Op.EMBED), waits=())
    with pytest.raises(InvalidSchedule, match=r"SAMPLE.*\(epoch 1\) can signal sample before #\d+ \(epoch 0\)"):
        check_signal_order(bad)


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_wrong_wait_count_is_caught(delta):
    program = _program()
    i = _first(program, Op.ATTN_COMBINE)
    w = program.instructions[i].waits[0]
    bad = _replace(program, i, waits=(Wait(w.counter, w.count + delta),))
    with pytest.raises(InvalidSchedule, match=f"waits for {w.count + delta} signals of counter L0.attn.g0, "
                                              f"but {w.count} instructions signal it"):
        check_counters(bad)
    schedule = list_schedule(bad, 4)
    match = "deadlock" if delta > 0 else "(sees counter .* before all of epoch|before .* is done with a buffer)"
    with pytest.raises(InvalidSchedule, match=match):
        for seed in range(10):
            simulate(bad, schedule, seed=seed)


def test_a_cycle_is_caught():
    program = _program()
    late = program.counter_id("L0.gate_up")
    i = _first(program, Op.QKV_ROPE)
    bad = _replace(program, i, waits=program.instructions[i].waits + (Wait(late, program.count(Op.GATE_UP) // 2),))
    with pytest.raises(InvalidSchedule, match="the wait graph has a cycle"):
        check_graph(bad)


def test_a_wait_on_a_later_instruction_breaks_the_global_order():
    program = _program()
    combine, o_proj = _first(program, Op.ATTN_COMBINE), _first(program, Op.O_PROJ)
    instrs = list(program.instructions)
    instrs.insert(o_proj, instrs.pop(combine))  # a combine now comes after a projection waiting on it
    bad = program.with_instructions(instrs)
    with pytest.raises(InvalidSchedule, match="O_PROJ.* waits on #.*, which comes later in the global order"):
        check_graph(bad)


def test_an_out_of_order_queue_is_caught_and_can_deadlock():
    program = _program()
    good = list_schedule(program, 2)
    queues = [list(q) for q in good.queues]
    # SM 0 takes the whole program, with the first LM head tile moved before the layers.
    lm = _first(program, Op.LM_HEAD)
    queue = sorted(queues[0] + queues[1])
    queue.remove(lm)
    queue.insert(1, lm)
    bad = Schedule(2, (tuple(queue), ()), good.makespan_us)
    with pytest.raises(InvalidSchedule, match="its queue breaks the global order"):
        check_queues(program, bad)
    with pytest.raises(InvalidSchedule, match="deadlock"):
        simulate(program, bad)


def test_lost_and_doubled_instructions_are_caught():
    program = _program()
    good = list_schedule(program, 2)
    with pytest.raises(InvalidSchedule, match="on no SM"):
        check_queues(program, Schedule(2, (good.queues[0][1:], good.queues[1]), 0.0))
    twice = tuple(sorted(set(good.queues[1]) | {good.queues[0][0]}))
    with pytest.raises(InvalidSchedule, match="queued on SM 0 and SM 1"):
        check_queues(program, Schedule(2, (good.queues[0], twice), 0.0))


def test_an_unordered_buffer_reuse_is_caught():
    """Two layers sharing a counter would let layer 1's QKV overwrite q while layer 0's attention reads it."""
    program = _program("llama3", "direct")
    qkv1 = [i for i, ins in enumerate(program.instructions) if ins.op == Op.QKV_ROPE and ins.layer == 1]
    # Layer 1's QKV no longer waits for layer 0's down projection, only for the embedding.
    embed_wait = program.instructions[_first(program, Op.QKV_ROPE)].waits
    bad = program
    for i in qkv1:
        bad = _replace(bad, i, waits=embed_wait)
    with pytest.raises(InvalidSchedule, match=r"QKV_ROPE\(layer=1.* (reads h|writes q)"):
        check_hazards(bad)
