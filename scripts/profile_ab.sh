#!/usr/bin/env bash
# A/B of graph-runner step times on a GPU: scripts/profile_step.py once per variant, a table last.
# Usage: VARIANTS="SONIC_PDL=1 SONIC_PDL=early ABLATE=splits8" scripts/profile_ab.sh [preset ...]
# Each variant is one VAR=VALUE setting, or several joined by commas (SONIC_PDL=early,ABLATE=bs32);
# the first is run again at the end, to show the noise;
# PROFILE_DIR (default $OUT or /tmp/sonic-out) gets one JSON per variant.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
dir=${PROFILE_DIR:-${OUT:-/tmp/sonic-out}}
mkdir -p "$dir"
read -ra variants <<< "${VARIANTS:-SONIC_PDL=early SONIC_PDL=1}"
variants+=("${variants[0]}")
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(llama-3.2-1b smollm2-135m)
: > /tmp/profile_ab.txt
for i in "${!variants[@]}"; do
  v=${variants[$i]}
  name=$(printf %s "$i-$v" | tr -c 'A-Za-z0-9_.-' '_')
  IFS=, read -ra settings <<< "$v"
  env "${settings[@]}" PROFILE_JSON="$dir/profile-$name.json" timeout "${VARIANT_TIMEOUT:-240}" \
    python3 scripts/profile_step.py "${presets[@]}" > "/tmp/profile-$name.txt" 2>&1 \
    || { echo "$v failed:"; tail -3 "/tmp/profile-$name.txt"; }
  grep "us/step" "/tmp/profile-$name.txt" | sed "s/^/$v  /" >> /tmp/profile_ab.txt
done
echo "== step times"
cat /tmp/profile_ab.txt
