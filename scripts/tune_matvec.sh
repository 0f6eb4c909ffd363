#!/usr/bin/env bash
# Compile every candidate in parallel (one process per shape), then time them one after another.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(llama-3.2-1b smollm2-135m)
for p in "${presets[@]}"; do
  for s in qkv o gate_up down lm_head; do
    TUNE_COMPILE_ONLY=1 TUNE_SHAPE="$p $s" python3 scripts/tune_matvec.py "$p" > /dev/null 2>&1 &
  done
done
wait
python3 scripts/tune_matvec.py "${presets[@]}" 2>&1 | grep -v -i warn
