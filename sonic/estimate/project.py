"""Tokens per second of one request: the bandwidth ceiling, and a projection calibrated on our benchmarks.

The model of one decode step on each of N GPUs (tensor parallel):

    ms/token = bytes read per GPU / (mbu x published bandwidth)
             + layers x overhead_us                       (launches, syncs, small ops: fixed per layer)
             + layers x 2 x (allreduce_us + link time)    (after attention and after the MLP, when N > 1)

The link time moves a ring all-reduce's share of the bf16 hidden state over one direction of the
GPU's links; at batch 1 that is a few kB, so latency dominates. The LM head's tiny final gather is
not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

from sonic.estimate.cost import TokenCost, token_cost
from sonic.estimate.hardware import GPU
from sonic.estimate.precision import Precision
from sonic.estimate.shape import ModelShape

# One-shot NVLink all-reduce of a batch-1 activation as measured on H200s (quoted in a project issue);
# to be replaced by our own figure once Sonic has a tensor-parallel benchmark.
ALLREDUCE_US = 3.4
ACTIVATION_BYTES = 2


@dataclass(frozen=True)
class Calibration:
    mbu: float              # share of the published bandwidth reached while streaming weights
    overhead_us: float      # fixed time per layer
    allreduce_us: float = ALLREDUCE_US


# Fitted by `sonic estimate --calibrate bench/results/2026-11-24-h100*.json` to the 5 graph-runner runs of
# commit c6f0ac2 on one H100 SXM (smollm2-135m, llama-3.2-1b at 384 and 4096 tokens, qwen3-1.7b,
# llama-3.1-8b; each within 3.1%). Re-run it when new results land and update these.
CALIBRATED = Calibration(mbu=0.855, overhead_us=11.6)


def link_us(hidden: int, gpus: int, gpu: GPU) -> float:
    """Microseconds to move one all-reduce's data: 2(N-1)/N of the activation, over one link direction."""
    if gpus == 1:
        return 0.0
    return 2 * (gpus - 1) / gpus * hidden * ACTIVATION_BYTES / (gpu.link_GBps * 1e9 / 2) * 1e6


def step_ms(bytes_per_gpu: float, bandwidth: float, layers: int, gpus: int, calibration: Calibration,
            link: float = 0.0) -> tuple[float, float, float]:
    """(reading, fixed, all-reduce) milliseconds of one decode step."""
    read = bytes_per_gpu / (calibration.mbu * bandwidth) * 1e3
    fixed = layers * calibration.overhead_us / 1e3
    allreduce = layers * 2 * (calibration.allreduce_us + link) / 1e3 if gpus > 1 else 0.0
    return read, fixed, allreduce


@dataclass(frozen=True)
class Projection:
    shape: ModelShape
    gpu: GPU
    gpus: int
    context: int
    cost: TokenCost
    calibration: Calibration
    read_ms: float
    fixed_ms: float
    allreduce_ms: float

    @property
    def ms_per_token(self) -> float:
        return self.read_ms + self.fixed_ms + self.allreduce_ms

    @property
    def tok_s(self) -> float:
        return 1e3 / self.ms_per_token

    @property
    def ceiling_tok_s(self) -> float:
        """Every byte read at the full published bandwidth, nothing else."""
        return self.gpu.bandwidth / self.cost.total

    @property
    def fits(self) -> bool:
        return self.cost.memory <= self.gpu.memory


def project(shape: ModelShape, precision: Precision, gpu: GPU, gpus: int = 1, context: int = 0,
            calibration: Calibration = CALIBRATED) -> Projection:
    cost = token_cost(shape, precision, gpus, context)
    times = step_ms(cost.total, gpu.bandwidth, shape.num_layers, gpus, calibration,
                    link_us(shape.hidden_size, gpus, gpu))
    return Projection(shape, gpu, gpus, context, cost, calibration, *times)
