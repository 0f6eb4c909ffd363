"""The one-shot all-reduce kernel: one rank simulated against pre-filled peer slots (CPU under the
Triton interpreter, or one GPU), and the real thing on two GPUs against NCCL."""
import numpy as np
import pytest
import torch

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
WORLD, CAP = 2, 64


def simulated(dtype):
    """Rank 0 of two, with rank 1's buffer and flags as plain local tensors."""
    bufs = [torch.zeros(2 * WORLD * CAP, dtype=dtype, device=DEVICE) for _ in range(WORLD)]
    flags = [torch.zeros(2 * WORLD, dtype=torch.int32, device=DEVICE) for _ in range(WORLD)]
    ptrs = [torch.tensor([t.data_ptr() for t in ts], device=DEVICE) for ts in (bufs, flags)]
    state = [torch.ones(1, dtype=torch.int32, device=DEVICE), torch.zeros(1, dtype=torch.int32, device=DEVICE)]
    return bufs, flags, ptrs, state


def launch(x, ptrs, state, max_spins=1000):
    from sonic.dist.one_shot import _one_shot_all_reduce
    out = torch.empty_like(x)
    _one_shot_all_reduce[(1,)](x, out, *ptrs, *state, x.numel(), max_spins, RANK=0, WORLD=WORLD, CAP=CAP, BLOCK=64)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sums_in_rank_order_with_double_buffered_epochs(dtype):
    bufs, flags, ptrs, state = simulated(dtype)
    n = 50
    for call in range(5):
        epoch = int(state[0])
        slot = (epoch % 2) * WORLD
        mine, peer = (torch.randn(n, device=DEVICE).to(dtype) for _ in range(2))
        bufs[0][(slot + 1) * CAP:(slot + 1) * CAP + n] = peer  # rank 1 has pushed and raised its flag
        flags[0][slot + 1] = epoch
        out = launch(mine, ptrs, state)
        assert torch.equal(out, (mine.float() + peer.float()).to(dtype))
        assert int(state[0]) == epoch + 1 and int(state[1]) == 0  # the kernel advances the epoch itself
        assert torch.equal(bufs[1][slot * CAP:slot * CAP + n], mine) and int(flags[1][slot]) == epoch


def test_a_silent_peer_sets_the_error_flag_instead_of_hanging():
    bufs, flags, ptrs, state = simulated(torch.float32)  # the buffers stay alive: the kernel writes them
    launch(torch.ones(8, device=DEVICE), ptrs, state, max_spins=50)
    assert int(state[1]) == 2  # rank 1 (stored as rank + 1) never raised its flag
    assert int(flags[1][2]) == 1 and torch.equal(bufs[1][2 * CAP:2 * CAP + 8], torch.ones(8, device=DEVICE))


def one_shot_checks(rank, world, port, sizes):
    from sonic.dist.allreduce import init_group, make_communicator
    torch.cuda.set_device(rank)
    init_group(rank, world, port, f"cuda:{rank}", timeout_s=60)
    one_shot, ordered, native = (make_communicator(n) for n in ("one-shot", "ordered", "native"))
    out = {}
    for size in sizes:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            x = torch.randn(size, generator=torch.Generator().manual_seed(1000 * rank + size)).to(dtype).cuda()
            out[size, str(dtype)] = [c(x).float().cpu().numpy() for c in (one_shot, ordered, native)]
    x = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(500):  # back to back, eager
        y = one_shot(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # and captured: ten calls per replay, fifty replays
        ys = [one_shot(x) for _ in range(10)]
    for _ in range(50):
        graph.replay()
    torch.cuda.synchronize()
    one_shot.check()
    out["loop"] = [y.float().cpu().numpy(), ys[-1].float().cpu().numpy(), ordered(x).float().cpu().numpy()]
    return out


@pytest.mark.multi_gpu
def test_one_shot_equals_the_ordered_baseline_on_two_gpus():
    from tp_helpers import run_ranks
    results = run_ranks(2, one_shot_checks, [1, 7, 2048, 4096, 8192, 12345, 16384, 20000])
    for key in results[0]:
        for r in results:
            got, ordered = r[key][0], r[key][1]
            assert np.array_equal(got, ordered), key  # the same arithmetic, so the same bits
            assert np.array_equal(got, results[0][key][0]), key  # on every rank
            if key != "loop":
                np.testing.assert_allclose(got, r[key][2], rtol=2e-2, atol=2e-2)  # and NCCL's own sum
        if key == "loop":
            assert np.array_equal(results[0][key][1], results[0][key][2])


@pytest.mark.multi_gpu
@pytest.mark.parametrize("allreduce", ["ordered", "one-shot"])
def test_tp2_matches_the_reference_on_two_gpus(allreduce):
    """Teacher-forced logits and greedy tokens of TP=2 on two GPUs against the one-device reference."""
    from conftest import TINY_CONFIGS
    from test_tp_shard import SEED, reference
    from tp_helpers import run_ranks, shard_checks
    names = ["llama3", "qwen2", "qwen3-untied-gqa4"]
    results = run_ranks(2, shard_checks, {n: TINY_CONFIGS[n] for n in names}, SEED, "cuda", allreduce)
    for name in names:
        forced, steps, greedy, _ = reference(name)
        got = results[0][name]
        np.testing.assert_allclose(got["forced"], forced.numpy(), rtol=0, atol=1e-3)
        np.testing.assert_allclose(got["steps"], steps.numpy(), rtol=0, atol=1e-3)
        assert got["greedy"] == greedy
        assert np.array_equal(results[1][name]["forced"], got["forced"])


@pytest.mark.multi_gpu
@pytest.mark.parametrize("allreduce", ["ordered", "one-shot"])
def test_engine_tp2_on_gpus_decodes_like_one_gpu(tiny_chat_model_dir, allreduce):
    """Greedy tokens of `--tp 2 --device cuda` against one GPU, up to 1,000 steps in two requests."""
    from sonic.engine.generate import Engine
    from sonic.engine.sampling import SamplingParams
    single = Engine.load(str(tiny_chat_model_dir), device="cuda", dtype="float32", runner="ref")
    engine = Engine.load(str(tiny_chat_model_dir), device="cuda", dtype="float32", tp=2, tp_allreduce=allreduce)
    try:
        for prompt in ([1, 2, 3], [5, 8, 13, 21]):
            assert list(engine.generate_ids(prompt, 500, SamplingParams())) == \
                list(single.generate_ids(prompt, 500, SamplingParams()))
    finally:
        engine.close()


def test_allreduce_benchmark_reports_every_communicator(capsys):
    """The benchmark's plumbing on CPU (gloo, eager calls); on GPUs it times CUDA graphs of calls."""
    from sonic.dist.bench_allreduce import main
    assert main(["--device", "cpu", "--dtype", "float32", "--sizes", "64", "256", "--calls", "2",
                 "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "native" in lines[1] and "ordered" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["64", "256"]
    assert all(line.count("us") == 2 for line in lines[2:])
