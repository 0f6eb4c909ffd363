"""The profile summary: per-instruction-type means and the time per layer, from kernel timestamps."""
import torch

from mono_helpers import TILINGS, tiny

from sonic.mono.builder import build_program
from sonic.mono.instructions import Op
from sonic.mono.profile import format_profile, summarize


def fake_stamps(program, layer_gap_ns=7000):
    """Each instruction: wait 100 ns, stage 200, matvec 300 (page waits 50), epilogue 250, release
    150; the producer waits 30 ns for a free page, 20 for copies to land and 10 for a release; layer l's instructions
    start at l * layer_gap_ns."""
    n = len(program.instructions)
    stamps = torch.zeros(n, 11, dtype=torch.int64)
    for i, ins in enumerate(program.instructions):
        t0 = ins.layer * layer_gap_ns + i
        stamps[i] = torch.tensor([t0, t0 + 100, t0 + 300, t0 + 600, t0 + 1000, t0, 50, t0 + 850, 30, 20, 10])
    return stamps


def test_summary_means_and_layer_time():
    program = build_program(tiny("llama3"), TILINGS["split-k"])
    summary = summarize(program, fake_stamps(program))
    qkv = summary["ops"]["QKV_ROPE"]
    assert qkv["count"] == program.count(Op.QKV_ROPE)
    assert (qkv["wait_us"], qkv["stage_us"], qkv["matvec_us"], qkv["epilogue_us"], qkv["release_us"],
            qkv["busy_us"]) == (0.1, 0.2, 0.3, 0.25, 0.15, 0.9)
    assert qkv["page_wait_us"] == 0.05 and qkv["weight_kib"] > 0
    assert (qkv["ring_full_us"], qkv["landing_us"], qkv["paused_us"]) == (0.03, 0.02, 0.01)
    assert summary["ops"]["ATTN_PARTIAL"]["weight_kib"] == 0
    # Layers start 7 us apart; the last instruction of each ends about 1 us after its own start.
    assert abs(summary["layer_us"]["median"] - 7.0) < 0.1
    assert set(summary["ops"]) == {op.name for op in Op}  # split-K: RESIDUAL too
    text = format_profile("mono", summary)
    assert "a layer every 7.0 us" in text and "QKV_ROPE" in text and "RESIDUAL" in text
    # Layer l's instructions are ready 100 ns (plus their index) after l * 7 us and end 1 us after
    # that; the layer before ended 1 us after its own start (plus a few ns of index).
    phase = summary["phases"]["QKV_ROPE"]
    assert 6.0 < phase["first_ready_us"] < 6.2 and 6.9 < phase["last_end_us"] < 7.1
    assert "a layer's chain" in text
