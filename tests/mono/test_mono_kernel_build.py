"""The CUDA monokernel builds for sm_90a wherever nvcc is installed (no GPU needed): no register
spills and no stack frame for any model shape, registers that let nine warps fit an SM; and the
host-side pieces that need no GPU."""
from __future__ import annotations

import ctypes
import re

import pytest
import torch

from mono_helpers import tiny, tiny_model

from sonic.errors import SonicError
from sonic.kernels.cuda import build
from sonic.mono.builder import build_program
from sonic.mono.codegen import generate_header
from sonic.mono.instructions import Tiling
from sonic.mono.kernel import Params, kernel_source, unsupported
from sonic.mono.runner import default_tiling
from sonic.presets import get_preset

needs_nvcc = pytest.mark.skipif(build.nvcc_path() is None,
                                reason="nvcc is not installed: the CUDA toolkit is needed to build the kernel")

SHAPES = {  # head_dim 64 and 128, q/k norm, bias with split-K and tiles that are not powers of two
    "llama-3.2-1b": lambda: build_program(get_preset("llama-3.2-1b"), default_tiling(get_preset("llama-3.2-1b"))),
    "qwen3-1.7b": lambda: build_program(get_preset("qwen3-1.7b"), default_tiling(get_preset("qwen3-1.7b"))),
    "tiny-qwen2-split-k": lambda: build_program(tiny("qwen2"), Tiling(qkv_heads_per_tile=2, o_rows_per_tile=24,
                                                                      gate_up_rows_per_tile=40, k_splits=3)),
}

SPILLS = {"qwen3-1.7b": 32}  # bytes of stack and spill stores allowed


@needs_nvcc
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_kernel_compiles_without_spills_or_stack(shape):
    program = SHAPES[shape]()
    assert unsupported(program) is None
    report = build.ptxas_report(kernel_source(program))
    props = dict(zip(re.findall(r"Function properties for (\w+)", report),
                     re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", report)))
    registers = dict(zip(re.findall(r"Compiling entry function '(\w+)'", report),
                         map(int, re.findall(r"Used (\d+) registers", report))))
    # Nine warps launch only at <= 170 registers per thread (three warps on one sub-partition).
    assert registers["mono_decode"] <= 170, report
    if shape in SPILLS:  # head_dim 128 under the cap: a few bytes, not a hot-loop stack
        stack, stores, loads = map(int, props["mono_decode"])
        assert stack <= SPILLS[shape] and stores <= SPILLS[shape], report
    else:
        assert props["mono_decode"] == ("0", "0", "0"), report


@needs_nvcc
def test_parameter_block_size_is_checked_by_the_compiler():
    # kernel_source ends with a static_assert of sizeof(Params) from ctypes: a drifted field fails.
    program = SHAPES["llama-3.2-1b"]()
    source = kernel_source(program).replace(f"sizeof(Params) == {ctypes.sizeof(Params)}",
                                            f"sizeof(Params) == {ctypes.sizeof(Params) + 8}")
    with pytest.raises(build.BuildError, match="Params differs"):
        build.ptxas_report(source)


def test_source_is_the_header_then_the_kernel_and_deterministic():
    program = SHAPES["llama-3.2-1b"]()
    source = kernel_source(program)
    assert source == kernel_source(program)
    assert source.index("namespace sonic_mono") < source.index("mono_decode")
    assert "#pragma once" not in source  # one translation unit
    assert generate_header(program).replace("#pragma once\n", "") in source
    assert kernel_source(program, {"MONO_CONSUMER_WARPS": 12}).startswith("#define MONO_CONSUMER_WARPS 12\n")


def test_parameter_block_layout():
    # 35 pointers, two 64-bit values, four 32-bit ones, the sampling seed and step, two floats: the
    # order of struct Params.
    assert ctypes.sizeof(Params) == 35 * 8 + 16 + 16 + 16 + 8
    assert Params.first_epoch.offset == 35 * 8 and Params.num_epochs.offset == 35 * 8 + 16
    assert Params.seed.offset == 35 * 8 + 32 and Params.inv_temperature.offset == 35 * 8 + 48


def test_unsupported_shapes_say_why():
    odd_head = tiny("llama2").with_(head_dim=12)
    assert "head_dim 12" in unsupported(build_program(odd_head, Tiling()))
    wide = build_program(get_preset("llama-3.2-1b"), Tiling(lm_head_rows_per_tile=512))
    assert "LM_HEAD tile of 512 rows" in unsupported(wide)
    assert unsupported(build_program(tiny("smollm2"), Tiling())) is None  # head_dim 8


def test_small_weights_hold_each_layer_in_the_kernels_order():
    from sonic.engine.packed import pack_model
    from sonic.mono.launcher import small_weights
    for family in ("qwen2", "qwen3"):
        packed = pack_model(tiny_model(family))
        blocks = small_weights(packed)
        c = tiny(family)
        width = 2 * c.hidden_size + (c.q_size + 2 * c.kv_size if c.attention_bias else 0) + \
            (2 * c.head_dim if c.qk_norm else 0)
        assert blocks.shape == (c.num_hidden_layers, width)
        layer = packed.layers[1]
        assert torch.equal(blocks[1, :c.hidden_size], layer.attn_norm)
        assert torch.equal(blocks[1, c.hidden_size:2 * c.hidden_size], layer.mlp_norm)
        tail = blocks[1, 2 * c.hidden_size:]
        if c.attention_bias:
            assert torch.equal(tail[:c.q_size + 2 * c.kv_size], layer.b_qkv)
        if c.qk_norm:
            assert torch.equal(tail[-2 * c.head_dim:], torch.cat([layer.q_norm, layer.k_norm]))


def test_mono_runner_needs_a_gpu():
    from sonic.engine.runners import make_runner
    from sonic.errors import SonicError
    with pytest.raises(SonicError, match="CUDA GPU"):
        make_runner("mono", tiny_model("llama3"))


class _FakeLaunch:
    """A MonoKernel whose launch 'writes' tokens one per poll and finishes after the last."""

    def __init__(self, tokens, fail=False):
        import numpy as np
        from sonic.mono.launcher import MonoKernel
        self.kernel = object.__new__(MonoKernel)
        k = self.kernel
        k.program = build_program(tiny("llama3"), Tiling())
        k.buffers = {"token": torch.zeros(1, dtype=torch.int32), "pos": torch.zeros(1, dtype=torch.int32)}
        k.device_index, k.epochs = 0, 0
        k.out_tokens = np.array(tokens, dtype=np.int32)
        k.out_count = np.zeros(1, dtype=np.int32)
        k.host_stop = np.zeros(1, dtype=np.int32)
        self.finishes, self.fail, self.total = 0, fail, len(tokens)
        k._launch = lambda *args, **kw: None
        k._finish = self.finish

    def query(self):  # the stream: one more token per poll, done after the last
        count = self.kernel.out_count
        if count[0] < self.total and not self.kernel.host_stop[0]:
            count[0] += 1
        return count[0] == self.total or bool(self.kernel.host_stop[0])

    def finish(self):
        from sonic.errors import SonicError
        self.finishes += 1
        if self.fail:
            raise SonicError("the monokernel stopped: waited more than")
        return int(self.kernel.out_count[0])


@pytest.fixture
def fake_stream(monkeypatch):
    holder = {}
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: holder["launch"])
    return holder


def test_decode_streams_every_token_then_finishes_once(fake_stream):
    fake = fake_stream["launch"] = _FakeLaunch([5, 6, 7, 8])
    assert list(fake.kernel.decode(1, 3, 4)) == [5, 6, 7, 8]
    assert fake.finishes == 1 and not fake.kernel.host_stop[0]


def test_closing_the_stream_raises_the_stop_flag(fake_stream):
    fake = fake_stream["launch"] = _FakeLaunch(list(range(10, 30)))
    it = fake.kernel.decode(1, 3, 20)
    assert [next(it) for _ in range(3)] == [10, 11, 12]
    it.close()
    assert fake.kernel.host_stop[0] == 1 and fake.finishes == 1


def test_a_kernel_error_is_raised_once(fake_stream):
    from sonic.errors import SonicError
    fake = fake_stream["launch"] = _FakeLaunch([5, 6], fail=True)
    with pytest.raises(SonicError, match="waited more than"):
        list(fake.kernel.decode(1, 3, 2))
    assert fake.finishes == 1


def test_what_the_kernel_samples_and_the_parameters_it_gets():
    from types import SimpleNamespace

    from sonic.engine.sampling import SamplingParams as S
    from sonic.mono.kernel import MAX_TOP_K
    from sonic.mono.launcher import MonoKernel, samples_in_kernel
    vocab = 1000
    assert samples_in_kernel(S(), vocab) and samples_in_kernel(S(temperature=0.8), vocab)
    assert samples_in_kernel(S(temperature=0.8, top_k=MAX_TOP_K, top_p=0.9), vocab)
    assert samples_in_kernel(S(temperature=0.8, top_k=vocab, top_p=1.0), vocab)  # a top-k that keeps all
    assert not samples_in_kernel(S(temperature=0.8, top_k=MAX_TOP_K + 1), vocab)
    assert not samples_in_kernel(S(temperature=0.8, top_p=0.9), vocab)  # the whole vocabulary sorted
    k = object.__new__(MonoKernel)
    k.program = build_program(tiny("llama3").with_(vocab_size=vocab), Tiling())
    k.buffers, k.host, k.max_epochs, k.epochs, k.timeout_s = {}, SimpleNamespace(device_ptr=4096), 8, 0, 5.0
    k.cache = SimpleNamespace(max_len=8)
    greedy = k._params(3, False, S(), 0)
    assert greedy.inv_temperature == 0 and greedy.top_k == 0 and greedy.top_p == 1
    p = k._params(3, False, S(temperature=0.7, top_k=vocab + 5, top_p=0.5), 2**62 + 3)
    assert p.inv_temperature == pytest.approx(1 / 0.7) and p.top_k == 0 and p.top_p == 0.5
    assert p.seed == 2**62 + 3 and p.sample_step == 0
    assert k._params(3, False, S(temperature=2.0, top_k=7), 1).top_k == 7


def test_a_block_too_big_for_an_sm_is_a_clear_error(monkeypatch):
    from sonic.kernels.cuda import driver
    from sonic.mono.launcher import check_block_fits
    monkeypatch.setattr(driver, "block_limits", lambda fn: (256, 188))
    with pytest.raises(SonicError, match="compiled with 188 registers per thread, too many for its 288 threads "
                                         r"\(256 fit\): use --runner graph"):
        check_block_fits(None, 288, "llama-3.2-1b")
    monkeypatch.setattr(driver, "block_limits", lambda fn: (288, 168))
    check_block_fits(None, 288, "llama-3.2-1b")


def _layout_probe(program, pages: int) -> str:
    """The generated header and common.cuh (where NUM_PAGES is computed), asserting `pages`."""
    from sonic.mono.kernel import CSRC
    header = generate_header(program).replace("#pragma once\n", "")
    return "\n".join([header, (CSRC / "ptx.cuh").read_text(), (CSRC / "common.cuh").read_text(),
                      f'static_assert(NUM_PAGES == {pages}, "ring_pages");\n'])


@needs_nvcc
@pytest.mark.parametrize("name,rows", [("llama-3.2-1b", 1), ("llama-3.2-1b", 4), ("llama-3.1-8b", 3),
                                       ("tiny-qwen2", 8)])
def test_ring_pages_mirror_the_kernels_layout(name, rows):
    from sonic.mono.kernel import ring_pages
    config = tiny("qwen2") if name.startswith("tiny") else get_preset(name)
    program = build_program(config, default_tiling(config), rows=rows)
    pages = ring_pages(program)
    build._nvcc(_layout_probe(program, pages), "probe.cubin", ["-w"], build.ARCH)
    with pytest.raises(build.BuildError, match="ring_pages"):
        build._nvcc(_layout_probe(program, pages + 1), "probe.cubin", ["-w"], build.ARCH)


def test_verification_builds_keep_the_decode_tiles_and_pages_for_the_ring():
    from sonic.mono.kernel import ring_pages
    from sonic.mono.runner import MIN_VERIFY_PAGES, VERIFY_ROWS, verify_rows
    rows = {}
    for name in ("llama-3.2-1b", "llama-3.1-8b", "qwen3-1.7b", "smollm2-135m"):
        config = get_preset(name)
        decode = build_program(config, default_tiling(config))
        rows[name] = verify_rows(decode)
        if rows[name]:
            wide = build_program(config, decode.tiling, rows=rows[name])
            assert wide.tiling == decode.tiling and ring_pages(wide) >= MIN_VERIFY_PAGES
    # qwen3-1.7b's q/k norm in attention (heads in parts) runs one row: it verifies elsewhere.
    assert rows == {"llama-3.2-1b": VERIFY_ROWS, "llama-3.1-8b": VERIFY_ROWS, "qwen3-1.7b": 0,
                    "smollm2-135m": VERIFY_ROWS}
    assert ring_pages(build_program(get_preset("llama-3.1-8b"), Tiling(), rows=8)) < MIN_VERIFY_PAGES


def _fake_verifier(rows: int, out: list[int]):
    import numpy as np
    from sonic.mono.launcher import MonoKernel
    k = object.__new__(MonoKernel)
    k.program = build_program(tiny("llama3"), Tiling(), rows=rows)
    k.buffers = {"token": torch.zeros(rows, dtype=torch.int32), "pos": torch.zeros(rows, dtype=torch.int32)}
    k.out_tokens = np.array(out, dtype=np.int32)
    k.launches = []
    k._launch = lambda n: k.launches.append((k.buffers["token"].tolist(), k.buffers["pos"].tolist()))
    k._finish = lambda: 1
    return k


def test_a_short_verification_repeats_its_last_token_at_its_position():
    k = _fake_verifier(4, [7, 8, 9, 9])
    assert k.verify([5, 6], 10) == [7, 8]
    assert k.launches == [([5, 6, 6, 6], [10, 11, 11, 11])]  # nothing written past position 11
    for bad in ([], [1, 2, 3, 4, 5]):
        with pytest.raises(ValueError, match="verifies 1 to 4 tokens"):
            k.verify(bad, 0)


def test_more_tokens_than_rows_verify_in_near_equal_epochs_in_order():
    from sonic.mono.runner import MonoRunner
    runner = object.__new__(MonoRunner)
    runner.kernel, runner._verify_limit = _fake_verifier(1, [1]), 3
    runner.verifiers = {3: _fake_verifier(3, [1, 2, 3]), 2: _fake_verifier(2, [4, 5])}
    assert runner.verify_argmax([10, 11, 12, 13, 14, 15, 16], 20) == [1, 2, 3, 4, 5, 4, 5]
    # seven tokens in three epochs of 3, 2 and 2, each on the build of its own row count (no padding)
    assert runner.verifiers[3].launches == [([10, 11, 12], [20, 21, 22])]
    assert runner.verifiers[2].launches == [([13, 14], [23, 24]), ([15, 16], [25, 26])]
    assert runner.verify_argmax([9], 5) == [1] and runner.kernel.launches == [([9], [5])]  # the decode kernel
