#!/usr/bin/env bash
# `sonic serve` on a GPU machine: start it on the given model, ask one plain and one streamed chat
# completion, print the answers with their timings, stop it. Usage: scripts/gpu_serve_smoke.sh MODEL [flags]
# Needs the `serve` extra (fastapi with its opentelemetry dependency, uvicorn) importable there.
set -uo pipefail
cd "$(dirname "$0")/.."
model=$1; shift
port=8765
python3 -m sonic serve --model "$model" --device cuda --port $port "$@" > /tmp/serve.log 2>&1 &
pid=$!
for _ in $(seq 120); do
  curl -sf localhost:$port/health > /dev/null && break
  kill -0 $pid 2>/dev/null || { echo "sonic serve exited:"; tail -5 /tmp/serve.log; exit 1; }
  sleep 1
done
python3 - "$port" <<'PY'
import json, sys, requests
url = f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions"
body = {"model": requests.get(url.replace("chat/completions", "models")).json()["data"][0]["id"],
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 48}
r = requests.post(url, json=body).json()
print("plain:", repr(r["choices"][0]["message"]["content"]), r["timings"])
text = ""
with requests.post(url, json={**body, "stream": True, "stream_options": {"include_usage": True}}, stream=True) as s:
    for line in s.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            chunk = json.loads(line[6:])
            for c in chunk["choices"]:
                text += c["delta"].get("content") or ""
            if chunk.get("timings"):
                print("stream timings:", chunk["timings"])
print("stream == plain:", text == r["choices"][0]["message"]["content"])
PY
kill -TERM $pid; wait $pid; echo "server exit $?"; tail -5 /tmp/serve.log
