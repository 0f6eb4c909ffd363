#!/usr/bin/env bash
# One call on a GPU machine: check the fast path against the reference, then time it.
# Usage: scripts/gpu_check.sh [preset ...]   (results land in $OUT, a short table prints last)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/sonic-out}
mkdir -p "$OUT"
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(llama-3.2-1b)

python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "== correctness (kernels in bf16, fused path vs reference)"
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -x -p no:cacheprovider tests/kernels tests/engine 2>&1 | tail -25
echo "== benchmarks"
for preset in "${presets[@]}"; do
  python3 -m sonic bench --preset "$preset" ${BENCH_FLAGS:-} --json "$OUT/$preset.json" > "$OUT/$preset.txt" 2>"$OUT/$preset.err" \
    || { echo "bench $preset failed:"; tail -5 "$OUT/$preset.err"; }
done
echo "== summary"
for preset in "${presets[@]}"; do cat "$OUT/$preset.txt" 2>/dev/null; done
