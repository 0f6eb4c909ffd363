"""The list schedule: one global order on every SM, balanced by the bytes each instruction streams."""
import pytest

from mono_helpers import TILINGS, tiny

from sonic.errors import SonicError
from sonic.mono.builder import build_program
from sonic.mono.instructions import Op
from sonic.mono.schedule import CostModel, H100_SMS, list_schedule
from sonic.mono.validate import check_queues
from sonic.presets import PRESETS


def test_one_sm_runs_the_global_order():
    program = build_program(tiny("llama3"), TILINGS["split-k"])
    schedule = list_schedule(program, 1)
    assert schedule.queues == (tuple(range(len(program.instructions))),)
    cost = CostModel()
    # The stream runs ahead of the fixed costs: between all bytes streamed and everything in series.
    streaming = sum(cost.stream_bytes(program, i) for i in program.instructions) / cost.sm_bytes_per_us
    serial = sum(cost.cost_us(program, i) for i in program.instructions)
    assert streaming < schedule.makespan_us <= serial + 1e-9


@pytest.mark.parametrize("preset", ["smollm2-135m", "llama-3.2-1b"])
def test_presets_spread_their_weights_evenly_over_132_sms(preset):
    program = build_program(PRESETS[preset])
    schedule = list_schedule(program, H100_SMS)
    check_queues(program, schedule)
    loads = [sum(program.instructions[i].weight_bytes for i in q) for q in schedule.queues]
    mean = sum(loads) / len(loads)
    assert max(loads) < 1.1 * mean, (max(loads) / mean)
    # With a small fixed cost, near the floor of streaming every byte at the bandwidth of all SMs,
    # and never below it (with the default cost, the chain of fixed costs bounds a small model).
    cheap = CostModel(fixed_us=0.3)
    floor = program.weight_bytes / (H100_SMS * cheap.sm_bytes_per_us)
    assert floor < list_schedule(program, H100_SMS, cheap).makespan_us < 1.1 * floor


def test_independent_instructions_run_side_by_side():
    """The tiles of one projection are independent: with as many SMs as tiles, each gets its own."""
    program = build_program(tiny("qwen3"), TILINGS["direct"])
    schedule = list_schedule(program, 64)
    sm_of = schedule.sm_of()
    gate_up = [i for i, ins in enumerate(program.instructions) if ins.op == Op.GATE_UP and ins.layer == 0]
    assert len({sm_of[i] for i in gate_up}) == len(gate_up)


def test_a_bad_sm_count_is_a_clear_error():
    with pytest.raises(SonicError, match="invalid number of SMs 0"):
        list_schedule(build_program(tiny("llama3")), 0)
