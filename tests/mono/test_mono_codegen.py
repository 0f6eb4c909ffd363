"""The generated C++ header: deterministic, and its struct matches Python's layout under nvcc."""
import shutil
import subprocess

import pytest

from mono_helpers import TILINGS, tiny

from sonic.mono.builder import build_program
from sonic.mono.codegen import generate_header, header_hash
from sonic.mono.instructions import MAX_WAITS, Op
from sonic.mono.layout import encode_instructions, encode_schedule, instruction_dtype
from sonic.mono.schedule import list_schedule


def test_header_is_deterministic_and_depends_on_the_model():
    a = generate_header(build_program(tiny("qwen3"), TILINGS["split-k"]))
    assert a == generate_header(build_program(tiny("qwen3"), TILINGS["split-k"]))
    other = build_program(tiny("llama3"), TILINGS["split-k"])
    assert header_hash(other) != header_hash(build_program(tiny("qwen3"), TILINGS["split-k"]))
    assert "constexpr bool QK_NORM = true;" in a and "constexpr int HEAD_DIM = 32;" in a
    for op in Op:
        assert f"OP_{op.name} = {int(op)}," in a


def test_encoded_instructions_hold_every_field():
    program = build_program(tiny("qwen2"), TILINGS["split-k"], rows=2)
    table = encode_instructions(program.instructions)
    assert table.dtype.itemsize % 8 == 0 and table.dtype == instruction_dtype()
    for row, ins in zip(table, program.instructions):
        assert Op(int(row["opcode"])) == ins.op and int(row["signal"]) == ins.signal
        assert (int(row["tile_begin"]), int(row["tile_end"]), int(row["k_begin"]), int(row["k_end"])) == \
            (ins.tile_begin, ins.tile_end, ins.k_begin, ins.k_end)
        assert int(row["weight_offset"]) == ins.weight_offset and int(row["weight_bytes"]) == ins.weight_bytes
        waits = [(int(row["wait_counter"][j]), int(row["wait_count"][j]), int(row["wait_lag"][j]))
                 for j in range(int(row["num_waits"]))]
        assert waits == [(w.counter, w.count, w.lag) for w in ins.waits]
        assert not row["wait_count"][len(ins.waits):MAX_WAITS].any()
    starts, items = encode_schedule(list_schedule(program, 3))
    assert starts[0] == 0 and starts[-1] == len(program.instructions) == len(items)
    assert sorted(items.tolist()) == list(range(len(program.instructions)))


def _layout_checks(program) -> str:
    """static_asserts of the struct layout and constants, written from numpy and the config."""
    dtype, c = instruction_dtype(), program.config
    lines = ["#include \"mono_model.h\"", "#include <cstddef>", "using namespace sonic_mono;",
             f"static_assert(sizeof(Instruction) == {dtype.itemsize}, \"size\");"]
    for name in dtype.names:
        lines.append(f"static_assert(offsetof(Instruction, {name}) == {dtype.fields[name][1]}, \"{name}\");")
    for name, value in (("HIDDEN_SIZE", c.hidden_size), ("INTERMEDIATE_SIZE", c.intermediate_size),
                        ("VOCAB_SIZE", c.vocab_size), ("NUM_KV_HEADS", c.num_key_value_heads),
                        ("NUM_INSTRUCTIONS", len(program.instructions)), ("ROWS", program.rows)):
        lines.append(f"static_assert({name} == {value}, \"{name}\");")
    lines += ["__global__ void touch(const Instruction* prog, unsigned* out) {",
              "    const Instruction& ins = prog[blockIdx.x];",
              "    if (ins.opcode == OP_SAMPLE) out[0] = ins.wait_count[ins.num_waits - 1] + KV_SPLITS;",
              "}"]
    return "\n".join(lines) + "\n"


def test_header_compiles_for_sm90a_with_matching_layout(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed: the CUDA toolkit is needed to compile the monokernel header")
    program = build_program(tiny("qwen3-untied-gqa4"), TILINGS["split-k"], rows=4)
    (tmp_path / "mono_model.h").write_text(generate_header(program))
    (tmp_path / "check.cu").write_text(_layout_checks(program))
    result = subprocess.run([nvcc, "-c", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
                             "-I", str(tmp_path), str(tmp_path / "check.cu"), "-o", str(tmp_path / "check.o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "sm_90a" in result.stderr and "0 bytes stack frame" in result.stderr


def test_a_wrong_layout_fails_to_compile(tmp_path):
    """The check above can fail: a wrong offset stops nvcc."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed: the CUDA toolkit is needed to compile the monokernel header")
    program = build_program(tiny("llama3"), TILINGS["direct"])
    (tmp_path / "mono_model.h").write_text(generate_header(program))
    checks = _layout_checks(program).replace(
        f"offsetof(Instruction, signal) == {instruction_dtype().fields['signal'][1]}",
        f"offsetof(Instruction, signal) == {instruction_dtype().fields['signal'][1] + 4}")
    (tmp_path / "check.cu").write_text(checks)
    result = subprocess.run([nvcc, "-c", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a",
                             "-I", str(tmp_path), str(tmp_path / "check.cu"), "-o", str(tmp_path / "check.o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "signal" in result.stderr
