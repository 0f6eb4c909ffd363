"""Published memory bandwidth, memory size and GPU-to-GPU links of common datacenter and consumer GPUs.

Figures are the vendors' datasheet numbers (decimal GB and GB/s). Link bandwidth is per GPU, both
directions together, as datasheets quote it. Where a card takes an optional bridge we assume plain PCIe.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sonic.errors import SonicError


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    bandwidth_GBps: float   # memory read bandwidth
    memory_GB: float
    interconnect: str
    link_GBps: float        # to the other GPUs, both directions together
    names: tuple[str, ...]  # what drivers call it (lower case), to recognise benchmark results

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_GBps * 1e9

    @property
    def memory(self) -> float:
        return self.memory_GB * 1e9


_NVLINK4, _NVLINK5, _PCIE4, _PCIE5 = ("NVLink 4", 900), ("NVLink 5", 1800), ("PCIe 4.0 x16", 64), ("PCIe 5.0 x16", 128)

GPUS = {g.key: g for g in (
    # https://www.nvidia.com/en-us/data-center/h100/ (SXM5, PCIe and NVL columns)
    GPU("h100", "NVIDIA H100 SXM5 80GB", 3350, 80, *_NVLINK4, ("h100 80gb hbm3", "h100 sxm5")),
    GPU("h100-pcie", "NVIDIA H100 PCIe 80GB", 2000, 80, *_PCIE5, ("h100 pcie",)),
    GPU("h100-nvl", "NVIDIA H100 NVL 94GB", 3900, 94, "NVLink bridge", 600, ("h100 nvl",)),
    # https://www.nvidia.com/en-us/data-center/h200/
    GPU("h200", "NVIDIA H200 SXM 141GB", 4800, 141, *_NVLINK4, ("h200",)),
    GPU("h200-nvl", "NVIDIA H200 NVL 141GB", 4800, 141, "NVLink bridge", 900, ("h200 nvl",)),
    # https://www.nvidia.com/en-us/data-center/dgx-b200/ (1,440 GB and 64 TB/s over 8 GPUs)
    GPU("b200", "NVIDIA B200 (HGX/DGX)", 8000, 180, *_NVLINK5, ("b200",)),
    # https://www.nvidia.com/en-us/data-center/gb200-nvl72/ (13.4 TB and 576 TB/s over 72 GPUs)
    GPU("gb200", "NVIDIA GB200 NVL72, per GPU", 8000, 186, *_NVLINK5, ("gb200",)),
    # https://www.nvidia.com/en-us/data-center/dgx-b300/ (2.3 TB over 8 GPUs; Blackwell Ultra HBM3e at 8 TB/s)
    GPU("b300", "NVIDIA B300 (HGX/DGX)", 8000, 288, *_NVLINK5, ("b300",)),
    # https://www.nvidia.com/en-us/data-center/a100/
    GPU("a100", "NVIDIA A100 SXM4 80GB", 2039, 80, "NVLink 3", 600, ("a100-sxm4-80gb",)),
    GPU("a100-40gb", "NVIDIA A100 SXM4 40GB", 1555, 40, "NVLink 3", 600, ("a100-sxm4-40gb",)),
    GPU("a100-pcie", "NVIDIA A100 80GB PCIe", 1935, 80, *_PCIE4, ("a100 80gb pcie", "a100-pcie-80gb")),
    # https://www.nvidia.com/en-us/data-center/l40s/ , /l4/ , /products/a10-gpu/
    GPU("l40s", "NVIDIA L40S", 864, 48, *_PCIE4, ("l40s",)),
    GPU("l4", "NVIDIA L4", 300, 24, *_PCIE4, ("l4",)),
    GPU("a10", "NVIDIA A10", 600, 24, *_PCIE4, ("a10",)),
    # https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html (7 links x 128 GB/s)
    GPU("mi300x", "AMD Instinct MI300X", 5300, 192, "Infinity Fabric", 896, ("mi300x",)),
    # https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html
    GPU("mi325x", "AMD Instinct MI325X", 6000, 256, "Infinity Fabric", 896, ("mi325x",)),
    # https://www.amd.com/en/products/accelerators/instinct/mi350/mi355x.html
    GPU("mi355x", "AMD Instinct MI355X", 8000, 288, "Infinity Fabric", 1075, ("mi355x",)),
    # https://www.nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5090/
    GPU("rtx-5090", "NVIDIA GeForce RTX 5090", 1792, 32, *_PCIE5, ("rtx 5090",)),
    # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
    GPU("rtx-4090", "NVIDIA GeForce RTX 4090", 1008, 24, *_PCIE4, ("rtx 4090",)),
    # https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3090-3090ti/
    GPU("rtx-3090", "NVIDIA GeForce RTX 3090", 936, 24, *_PCIE4, ("rtx 3090",)),
    # https://www.nvidia.com/en-us/design-visualization/rtx-6000/
    GPU("rtx-6000-ada", "NVIDIA RTX 6000 Ada", 960, 48, *_PCIE4, ("rtx 6000 ada",)),
    # https://www.nvidia.com/en-us/products/workstations/professional-desktop-gpus/rtx-pro-6000/
    GPU("rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell", 1792, 96, *_PCIE5, ("rtx pro 6000",)),
)}


def get_gpu(key: str) -> GPU:
    try:
        return GPUS[key.lower()]
    except KeyError:
        raise SonicError(f"unknown GPU '{key}' for --gpu: choose one of {', '.join(GPUS)}") from None


def find_gpu(device_name: str) -> GPU | None:
    """The table entry for a device name as drivers report it ('NVIDIA H100 80GB HBM3'), if any."""
    name = device_name.lower()
    matches = [(len(alias), gpu) for gpu in GPUS.values() for alias in gpu.names
               if re.search(rf"(?<![a-z0-9]){re.escape(alias)}(?![a-z0-9])", name)]
    return max(matches, key=lambda m: m[0])[1] if matches else None
