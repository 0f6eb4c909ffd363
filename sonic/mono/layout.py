"""The binary layout of an instruction, shared by Python (numpy) and the generated C++ struct.

The fields follow the `Instruction` dataclass; its wait tuple becomes three fixed-size arrays of
`MAX_WAITS` entries plus a count. numpy's aligned structured dtype gives the offsets, and the C++
header declares the same fields in the same order, which C's alignment rules lay out identically
(the nvcc test static_asserts every offset).
"""
from __future__ import annotations

from dataclasses import fields

import numpy as np

from sonic.mono.instructions import MAX_WAITS, Instruction
from sonic.mono.schedule import Schedule

# (name, numpy type, C++ type, array length or 0): one source for both sides.
_SCALARS = {"op": "opcode", "layer": "layer", "group": "group", "split": "split"}
_C_TYPES = {"u2": "uint16_t", "u4": "uint32_t", "u8": "uint64_t"}


def instruction_fields() -> list[tuple[str, str, int]]:
    """(C name, numpy type code, array length or 0), in declaration order."""
    out = []
    for f in fields(Instruction):
        if f.name in _SCALARS:
            out.append((_SCALARS[f.name], "u2", 0))
        elif f.name == "waits":
            out += [("num_waits", "u4", 0), ("wait_counter", "u4", MAX_WAITS), ("wait_count", "u4", MAX_WAITS),
                    ("wait_lag", "u4", MAX_WAITS)]
        elif f.name == "weight_offset":
            out.append((f.name, "u8", 0))
        else:
            out.append((f.name, "u4", 0))
    return out


def c_type(code: str) -> str:
    return _C_TYPES[code]


def instruction_dtype() -> np.dtype:
    return np.dtype([(name, code, (n,)) if n else (name, code) for name, code, n in instruction_fields()],
                    align=True)


def encode_instructions(instructions: tuple[Instruction, ...]) -> np.ndarray:
    """The instruction list as the kernel reads it: one struct per instruction."""
    out = np.zeros(len(instructions), dtype=instruction_dtype())
    for i, ins in enumerate(instructions):
        row = out[i]
        row["opcode"], row["layer"], row["group"], row["split"] = int(ins.op), ins.layer, ins.group, ins.split
        for name in ("tile_begin", "tile_end", "k_begin", "k_end", "signal", "weight_offset", "weight_bytes"):
            row[name] = getattr(ins, name)
        row["num_waits"] = len(ins.waits)
        for j, w in enumerate(ins.waits):
            row["wait_counter"][j], row["wait_count"][j], row["wait_lag"][j] = w.counter, w.count, w.lag
    return out


def encode_schedule(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """(queue_start uint32 [num_sms + 1], queue uint32): SM s runs queue[queue_start[s]:queue_start[s+1]]."""
    starts, items = schedule.encode()
    return np.asarray(starts, dtype=np.uint32), np.asarray(items, dtype=np.uint32)
