#!/usr/bin/env bash
# One call on a GPU machine for the monokernel: an A/B of its settings per preset (scripts/mono_ab.py),
# some of its GPU tests, then `sonic bench --runner mono --compare graph --profile` per preset.
# Kernels built ahead (SONIC_CACHE_DIR=.cuda_cache) are used from .cuda_cache/. Reports land in $OUT.
# AB="preset:variant,variant;preset:variant" (variants as mono_ab.py takes them, joined by spaces
# inside: "llama-3.2-1b:base MONO_IN_FLIGHT=6"); TESTS_K: pytest -k of tests/mono/test_mono_gpu.py
# ("none" skips); TESTS_FILES (default tests/mono/test_mono_gpu.py); BENCH_PRESETS (default
# llama-3.2-1b smollm2-135m; "none" skips).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/sonic-out}
mkdir -p "$OUT"
[ -d .cuda_cache ] && export SONIC_CACHE_DIR=$PWD/.cuda_cache
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
IFS=';' read -ra groups <<< "${AB:-}"
for group in "${groups[@]}"; do
  preset=${group%%:*}
  read -ra variants <<< "${group#*:}"
  timeout "${AB_TIMEOUT:-200}" python3 scripts/mono_ab.py "$preset" "${variants[@]}" > "$OUT/ab-$preset.log" 2>&1
  grep -A14 "GB/s read" "$OUT/ab-$preset.log" || tail -5 "$OUT/ab-$preset.log"
done
if [ "${TESTS_K:-none}" != none ]; then
  timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -rf -p no:cacheprovider ${TESTS_FILES:-tests/mono/test_mono_gpu.py} \
    -k "$TESTS_K" > "$OUT/pytest.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -8
fi
read -ra presets <<< "${BENCH_PRESETS:-llama-3.2-1b smollm2-135m}"
[ "${presets[*]}" = none ] && presets=()
for preset in "${presets[@]}"; do
  timeout "${BENCH_TIMEOUT:-120}" python3 -m sonic bench --preset "$preset" --runner mono --compare graph --profile \
    --repeats 3 --json "$OUT/bench-$preset.json" > "$OUT/bench-$preset.txt" 2>&1 || tail -3 "$OUT/bench-$preset.txt"
done
for preset in "${presets[@]}"; do cat "$OUT/bench-$preset.txt" 2>/dev/null | grep -v "^  [A-Z_]* "; done
