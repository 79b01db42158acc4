#!/usr/bin/env bash
# The official OpenAI Python SDK (from PyPI) against the real gateway and mock upstream
# (issue 6): chat, streaming chat with tools, responses.create stream and non-stream, through
# an OpenAI passthrough backend, an Anthropic and a Gemini translation backend.
#
# Skips (exit 0, with a message) when python3, venv or pip cannot provide the SDK: the Rust
# suites do not depend on it. Bounded: pip 180 s, the checks 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3 >/dev/null 2>&1; then
  echo "sdk_test: python3 not found; skipped"
  exit 0
fi
VENV=target/sdk-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >/dev/null 2>&1 || { echo "sdk_test: python3 -m venv failed; skipped"; exit 0; }
fi
if ! "$VENV/bin/python" -c "import openai" >/dev/null 2>&1; then
  if ! timeout 180 "$VENV/bin/pip" install -q openai >/dev/null 2>&1; then
    echo "sdk_test: pip could not install openai; skipped"
    exit 0
  fi
fi

cargo build --bins --all-features -q
BIN=target/debug
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Both print their address once they accept; port 0 picks free ports.
"$BIN/mock-upstream" >"$WORK/mock.out" 2>/dev/null &
PIDS+=($!)
wait_line() { # file pattern
  for _ in $(seq 1 200); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "sdk_test: $1 never printed $2" >&2
  cat "$1" >&2
  return 1
}
wait_line "$WORK/mock.out" "listening on"
MOCK=$(grep -o 'http://[0-9.:]*' "$WORK/mock.out" | head -1)

cat >"$WORK/gateway.json" <<JSON
{"backends": [
  {"name": "oai", "base_url": "$MOCK/v1"},
  {"name": "claude", "provider": "anthropic",
   "provider_config": {"base_url": "$MOCK", "api_key": "sk-ant-sdk", "models": ["claude-test"]}},
  {"name": "gem", "provider": "gemini", "provider_config": {"base_url": "$MOCK", "api_key": "g-sdk"}}
 ],
 "virtual_keys": [],
 "router": {"default_backends": [{"backend": "oai"}],
            "rules": [{"model_prefix": "claude-", "backend": "claude"},
                      {"model_prefix": "gemini-2.0-flash", "exact": true, "backend": "gem"}]}}
JSON
"$BIN/ditto-gateway" "$WORK/gateway.json" --listen 127.0.0.1:0 --workers 2 2>"$WORK/gw.err" >/dev/null &
PIDS+=($!)
wait_line "$WORK/gw.err" "listening on http://"
GW=$(grep -o 'listening on http://[0-9.:]*' "$WORK/gw.err" | head -1 | sed 's/listening on //')

GATEWAY_URL="$GW" timeout 120 "$VENV/bin/python" tests/sdk/test_openai_sdk.py
