"""compute-sanitizer's racecheck on the monokernel: no shared-memory hazard on a tiny model (GPU)."""
import os
import re
import shutil
from collections import Counter
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
# A few tokens of a tiny model straight through the kernel (no prefill: cuBLAS fails under the tool),
# one epoch per launch, then several in one, greedy and sampled; the watchdog's bound raised, since racecheck slows
# every shared-memory access by orders of magnitude.
CHILD = """
import sys
sys.path.insert(0, "tests/mono")
from test_mono_gpu import make
mono, _ = make(sys.argv[1])
kernel = mono.kernel
kernel.timeout_s = 120.0
for position, token in enumerate([3, 1, 4]):
    kernel.step([token], position)
from sonic.engine.sampling import SamplingParams
sampled = SamplingParams(temperature=1.0, top_k=8, top_p=0.9)
print("tokens", list(kernel.decode(5, 3, 3)), list(kernel.decode(6, 6, 3, sampling=sampled, seed=1)))
"""


def sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidate = Path(home) / "bin" / "compute-sanitizer"
    return str(candidate) if candidate.exists() else None


def hazards(report: str) -> str:
    """The distinct (kind, first access, second access) of a racecheck report, most frequent first."""
    found = re.findall(r"Potential (\w+) hazard detected at __shared__ (0x[0-9a-f]+).*?\n.*?(Write|Read) Thread "
                       r"\(([0-9,]+)\) at ([^\n]+)\n.*?(Write|Read) Thread \(([0-9,]+)\) at ([^\n]+)", report)
    counts, example = Counter(), {}
    for kind, address, a, ta, pa, b, tb, pb in found:
        key = (kind, f"{a} t{ta} {pa}", f"{b} t{tb} {pb}")
        counts[key] += 1
        example.setdefault(key, address)
    return "\n".join(f"{n} x {kind} (e.g. at {example[kind, one, two]}): {one} / {two}"
                     for (kind, one, two), n in counts.most_common(20))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_racecheck_finds_no_hazard(family):
    tool = sanitizer()
    if tool is None:
        pytest.skip("compute-sanitizer is not installed")
    run = subprocess.run([tool, "--tool", "racecheck", "--racecheck-report", "hazard", "--kernel-name",
                          "kns=mono_decode", "--error-exitcode", "3", sys.executable, "-c", CHILD, family],
                         cwd=ROOT, capture_output=True, text=True, timeout=500,
                         env={**os.environ, "SONIC_CUDA_LINEINFO": "1"})
    out = run.stdout + run.stderr
    assert "tokens [" in out, out[-4000:]
    assert run.returncode == 0, hazards(out) + "\n" + out[-2000:]
    assert re.search(r"RACECHECK SUMMARY: 0 hazards displayed \(0 errors", out), out[-2000:]
