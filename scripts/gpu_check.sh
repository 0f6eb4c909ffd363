#!/usr/bin/env bash
# One call on a GPU machine: check the fast path against the reference, then time it.
# Usage: scripts/gpu_check.sh [preset ...]. Reports land in $OUT; a short table prints last.
# TESTS (default: the fused-path and speculative tests) picks what pytest runs; TEST_TIMEOUT and BENCH_TIMEOUT bound each part.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/sonic-out}
mkdir -p "$OUT"
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(llama-3.2-1b smollm2-135m qwen3-1.7b llama-3.1-8b)

python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "== correctness"
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -x -p no:cacheprovider ${TESTS:-tests/engine tests/spec} 2>&1 | tail -20

bench() {  # name, then sonic bench flags
  local name=$1; shift
  timeout "${BENCH_TIMEOUT:-100}" python3 -m sonic bench "$@" --json "$OUT/$name.json" > "/tmp/$name.txt" 2>"/tmp/$name.err" \
    || { echo "bench $name failed:"; tail -4 "/tmp/$name.err"; }
}
echo "== benchmarks"
bench "${presets[0]}" --preset "${presets[0]}" --compare ref --repeats 3 --plot "$OUT/${presets[0]}.png"
for preset in "${presets[@]:1}"; do bench "$preset" --preset "$preset" --repeats 3; done
bench "${presets[0]}-ctx4096" --preset "${presets[0]}" --context 4096 --repeats 3
# Speculation per task on the default model's real weights (off, k = 2 4 8, auto).
BENCH_TIMEOUT=${TASKS_TIMEOUT:-500} bench tasks --tasks --repeats 3
echo "== summary"
for name in "${presets[@]}" "${presets[0]}-ctx4096" tasks; do cat "/tmp/$name.txt" 2>/dev/null; done
