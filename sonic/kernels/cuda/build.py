"""nvcc at first use: a cubin of the kernels a model needs, cached on disk by the hash of its source."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCH = "sm_90a"


class BuildError(RuntimeError):
    pass


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else None


def cache_dir() -> Path:
    root = os.environ.get("SONIC_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                            os.path.expanduser("~/.cache"), "sonic")
    path = Path(root) / "cuda"
    path.mkdir(parents=True, exist_ok=True)
    return path


def nvcc_flags(arch: str = ARCH) -> list[str]:
    # SONIC_CUDA_LINEINFO=1: source lines in the cubin, for compute-sanitizer's reports and profilers.
    lines = ["-lineinfo"] if os.environ.get("SONIC_CUDA_LINEINFO") == "1" else []
    return ["-std=c++17", "-O3", f"-arch={arch}", "--expt-relaxed-constexpr", *lines, "-I", str(HERE)]


def _nvcc(source: str, out_name: str, extra: list[str], arch: str) -> tuple[bytes, str]:
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("nvcc was not found: install the CUDA toolkit (or set CUDA_HOME) to build the CUDA kernels")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernels.cu"
        src.write_text(source)
        out = Path(tmp) / out_name
        result = subprocess.run([nvcc, *nvcc_flags(arch), *extra, "-cubin", "-o", str(out), str(src)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"nvcc failed on the CUDA kernels:\n{result.stderr[-4000:]}")
        return out.read_bytes(), result.stderr


def ptxas_report(source: str, arch: str = ARCH) -> str:
    """ptxas's resource report (registers, spills, stack) for every kernel of `source`."""
    return _nvcc(source, "report.cubin", ["-Xptxas", "-v"], arch)[1]


def compile_cubin(source: str, arch: str = ARCH) -> bytes:
    """The cubin of `source` (which may include headers beside this file), from the cache or nvcc."""
    headers = "".join(p.read_text() for p in sorted(HERE.glob("*.cuh")))
    # The include path is left out of the key, so a cache built in one checkout serves another.
    flags = " ".join(nvcc_flags(arch)).replace(str(HERE), "<sonic>")
    key = hashlib.sha256((arch + "\0" + headers + "\0" + source + "\0" + flags).encode())
    target = cache_dir() / f"{key.hexdigest()[:24]}.cubin"
    if target.exists():
        return target.read_bytes()
    # A minute or so for the monokernel: say why the first use waits (later ones load the cache).
    print(f"building CUDA kernels for {arch} (once; cached in {target.parent})", file=sys.stderr, flush=True)
    data = _nvcc(source, "kernels.cubin", [], arch)[0]
    part = target.with_suffix(f".{os.getpid()}.part")
    part.write_bytes(data)
    part.replace(target)  # atomic: concurrent builders never see half a file
    return data
