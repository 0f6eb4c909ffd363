#!/usr/bin/env bash
# One call on a GPU machine: check the fast path against the reference, then time it.
# Usage: scripts/gpu_check.sh [preset ...]. Reports land in $OUT; a short table prints last.
# TESTS: what pytest runs (default: the fused-path, verification, speculative and monokernel tests; "none" skips).
# BENCH=0 skips the preset benchmarks; TASKS=1 adds speculation per task on the default model's weights;
# SONIC_MATVEC=cuda runs everything on the tensor-core matvec. VERIFY_COST=M also times verifying 1..M tokens on the first preset; TASK_FLAGS adds flags to the task run.
# RUNNERS="graph mono" times each preset on the first runner and compares the others in the same run.
# Kernels built ahead (python -m sonic.mono.prebuild with SONIC_CACHE_DIR=.cuda_cache) are used from .cuda_cache/.
# Wheels in .whl/ are installed first; the default model may arrive split in .model_part1/ and
# .model_part2/ (see scripts/split_default_model.sh): the parts are joined and checked here.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/sonic-out}
mkdir -p "$OUT"
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(llama-3.2-1b smollm2-135m qwen3-1.7b llama-3.1-8b)

[ -d .cuda_cache ] && export SONIC_CACHE_DIR=$PWD/.cuda_cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
if [ "${TASKS:-0}" = 1 ]; then
  scripts/join_default_model.sh /tmp/site || { echo "the default model is missing: tasks skipped"; TASKS=0; }
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
if [ "${TESTS:-}" != none ]; then
  echo "== correctness"
  # The kernels' option grids are covered on CPU; on the GPU, the bf16 cases and row identity.
  default=(tests/engine tests/spec tests/kernels/test_decode_attention.py tests/kernels/test_matvec.py
           tests/kernels/test_cuda_matvec.py tests/mono/test_mono_gpu.py tests/mono/test_mono_verify_gpu.py
           -k "not every_option and not several_blocks")
  if [ -n "${TESTS:-}" ]; then read -ra default <<< "$TESTS"; fi
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -rf -p no:cacheprovider "${default[@]}" > "$OUT/pytest.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -25
fi

bench() {  # name, then sonic bench flags
  local name=$1; shift
  timeout "${BENCH_TIMEOUT:-100}" python3 -m sonic bench "$@" --json "$OUT/$name.json" > "/tmp/$name.txt" 2>"/tmp/$name.err" \
    || { echo "bench $name failed:"; tail -4 "/tmp/$name.err"; }
}
names=()
read -ra runners <<< "${RUNNERS:-auto}"
runner_flags=(--runner "${runners[0]}")
for other in "${runners[@]:1}"; do runner_flags+=(--compare "$other"); done
if [ "${BENCH:-1}" = 1 ]; then
  echo "== benchmarks"
  bench "${presets[0]}" --preset "${presets[0]}" "${runner_flags[@]}" --repeats 3 --verify-cost "${VERIFY_COST:-0}"
  for preset in "${presets[@]:1}"; do bench "$preset" --preset "$preset" "${runner_flags[@]}" --repeats 3; done
  bench "${presets[0]}-ctx4096" --preset "${presets[0]}" "${runner_flags[@]}" --context 4096 --repeats 3
  names+=("${presets[@]}" "${presets[0]}-ctx4096")
fi
if [ "${TASKS:-0}" = 1 ]; then
  # Speculation per task on the default model's real weights (off, k = 2 4 8, auto).
  # shellcheck disable=SC2086
  BENCH_TIMEOUT=${TASKS_TIMEOUT:-400} bench tasks --tasks --repeats "${TASK_REPEATS:-2}" ${TASK_FLAGS:-}
  names+=(tasks)
fi
echo "== summary"
for name in "${names[@]}"; do cat "/tmp/$name.txt" 2>/dev/null; done
