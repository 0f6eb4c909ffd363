#!/usr/bin/env bash
# The one-call round on a GPU machine: every preset on the graph runner against the monokernel
# (scripts/gpu_check.sh, kernels from .cuda_cache), then the graph runner's step time per setting
# (scripts/profile_ab.sh). Reports land in $OUT; the tables print last.
# RUNNERS (default "graph mono") and TESTS (default none) pass to gpu_check.sh; VARIANTS and
# AB_PRESETS to profile_ab.sh. PACK=1 puts every report in $OUT/round.tgz instead (one file to fetch).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sonic-out}
export OUT
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(llama-3.2-1b smollm2-135m qwen3-1.7b llama-3.1-8b)
RUNNERS=${RUNNERS:-"graph mono"} TESTS=${TESTS:-none} BENCH_TIMEOUT=${BENCH_TIMEOUT:-150} \
  bash scripts/gpu_check.sh "${presets[@]}" > /tmp/round_bench.txt 2>&1
read -ra ab_presets <<< "${AB_PRESETS:-llama-3.2-1b smollm2-135m}"
VARIANTS=${VARIANTS:-"SONIC_PDL=early SONIC_PDL=1"} VARIANT_TIMEOUT=${VARIANT_TIMEOUT:-120} \
  bash scripts/profile_ab.sh "${ab_presets[@]}" > /tmp/round_ab.txt 2>&1
if [ "${PACK:-0}" = 1 ]; then
  tar czf /tmp/round.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/round.tgz "$OUT/"
fi
sed -n '/== correctness/,/== benchmarks/p' /tmp/round_bench.txt | grep -v "== benchmarks"
sed -n '/== summary/,$p' /tmp/round_bench.txt
grep -E -A3 "failed:|Error" /tmp/round_bench.txt | head -12
grep -v "  kernel  " /tmp/round_ab.txt
