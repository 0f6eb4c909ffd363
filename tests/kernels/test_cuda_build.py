"""The CUDA kernels build on any machine with nvcc (no GPU needed): no spills, no stack frame, one
kernel per flag set; and the pieces of the launcher that do not need a GPU."""
from __future__ import annotations

import ctypes
import dataclasses
import re
import shutil

import pytest

from sonic.errors import SonicError
from sonic.kernels.cuda import build, driver
from sonic.kernels.cuda import matvec as cmv
from sonic.kernels.matvec_backend import Matvec, choice

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None and build.nvcc_path() is None,
                                reason="nvcc is not installed: the CUDA toolkit is needed to build the kernels")


@needs_nvcc
def test_standard_kernels_compile_without_spills():
    report = build.ptxas_report(cmv.kernels_source())
    entries = re.findall(r"Compiling entry function '(\w+)'", report)
    assert sorted(entries) == sorted(f.name for f in cmv.STANDARD)
    props = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert len(props) == len(entries)
    assert all(p == ("0", "0", "0") for p in props), report


@needs_nvcc
def test_a_broken_kernel_is_a_clear_build_error():
    with pytest.raises(build.BuildError, match="nvcc failed"):
        build.ptxas_report(cmv.kernels_source() + "this is not C++;\n")


def test_cubins_are_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SONIC_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(build, "_nvcc", lambda src, name, extra, arch: (calls.append(src) or (b"cubin:" + src.encode(), "")))
    assert build.compile_cubin("a") == b"cubin:a"
    assert build.compile_cubin("a") == b"cubin:a" and len(calls) == 1
    build.compile_cubin("b")
    assert len(calls) == 2 and len(list((tmp_path / "cuda").glob("*.cubin"))) == 2


def test_flags_name_every_kernel_apart():
    names = {f.name for f in cmv.STANDARD}
    assert len(names) == len(cmv.STANDARD)
    assert all(re.fullmatch(r"tcmv_[01]{12}(_k[248])?", n) for n in names)
    # Every normalising kernel also comes wide (more rows' inputs in flight), for verification.
    narrow = {f for f in cmv.STANDARD if f.norm and not f.wide}
    assert {dataclasses.replace(f, wide=True) for f in narrow} == {f for f in cmv.STANDARD if f.wide}
    assert "8, true" in cmv.Flags(norm=True, wide=True).source() and "4, true" in cmv.Flags(norm=True).source()
    assert cmv.Flags(norm=True).smem(16, 2048) == 16 * 2056 * 2 and cmv.Flags().smem(16, 2048) == 0


def test_launch_structs_match_the_driver_abi():
    # CUlaunchAttribute is 72 bytes, CUlaunchConfig 56 with the stream at 32; TcParams is 120 bytes.
    assert ctypes.sizeof(driver._LaunchAttribute) == 72
    assert ctypes.sizeof(driver._LaunchConfig) == 56 and driver._LaunchConfig.stream.offset == 32
    assert ctypes.sizeof(cmv._Params) == 120 and cmv._Params.M.offset == 96


def test_tiles():
    assert cmv.num_tiles(128256) == 8016 and cmv.tiles_per_block(128256) == 7 and cmv.tiles_per_block(3072) == 1


def test_long_k_over_few_tiles_splits_over_a_cluster():
    # llama-3.2-1b's down projection (K 8192, 128 tiles) on two SMs per tile; the rest on one.
    assert cmv.ksplit(2048, 8192) == 2 and cmv.ksplit(576, 1536) == 1 and cmv.ksplit(2048, 2048) == 1
    assert cmv.ksplit(4096, 14336) == 1  # 256 tiles fill the GPU already
    assert "tcmv::run<8, 2," in cmv.Flags(res=True, split=2).source() and cmv.Flags(split=2).name.endswith("_k2")
    assert any(f.split == 2 for f in cmv.STANDARD)


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("SONIC_MATVEC", raising=False)
    assert choice() == "triton" and Matvec().backend == "triton"
    monkeypatch.setenv("SONIC_MATVEC", "tensorcores")
    with pytest.raises(SonicError, match="SONIC_MATVEC='tensorcores' is not a matvec backend: use one of triton, cuda"):
        choice()


def test_cuda_backend_without_nvcc_names_the_fix(monkeypatch):
    monkeypatch.setattr(cmv, "available", lambda: False)
    with pytest.raises(SonicError, match="needs nvcc"):
        Matvec("cuda")


def test_cpu_tensors_stay_on_triton():
    import torch
    w = torch.zeros(64, 64, dtype=torch.bfloat16)
    x = torch.zeros(1, 64, dtype=torch.bfloat16)
    assert not cmv.supports(x, w, torch.zeros(1, 64))
