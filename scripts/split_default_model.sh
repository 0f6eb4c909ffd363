#!/usr/bin/env bash
# Split the embedded default model into two git-ignored halves (.model_part1/, .model_part2/), each small
# enough to send to a GPU machine on its own; scripts/join_default_model.sh puts them back together.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(${PYTHON:-.venv/bin/python} -c "from sonic.weights.loader import default_model_path; print(default_model_path())")
size=$(stat -c %s "$src")
half=$(( (size + 1) / 2 ))
mkdir -p .model_part1 .model_part2
head -c "$half" "$src" > .model_part1/part
tail -c +"$(( half + 1 ))" "$src" > .model_part2/part
sha256sum "$src" | cut -d' ' -f1 > .model_part2/sha256
echo "split $src into two parts of $half bytes at most"
