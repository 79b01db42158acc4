#!/usr/bin/env bash
# Syscalls per proxied request, on each I/O driver: strace -c on the gateway (one worker) while
# ditto-loadgen sends keep-alive small-JSON requests through it to the mock upstream.
#   bash loadtest/syscalls.sh            (needs strace; builds release binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin ditto-gateway --bin mock-upstream --bin ditto-loadgen >/dev/null
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
./target/release/mock-upstream --listen 127.0.0.1:0 >"$tmp/mock.out" 2>/dev/null &
for _ in $(seq 50); do [ -s "$tmp/mock.out" ] && break; sleep 0.1; done
mock=$(awk '{print $NF}' "$tmp/mock.out")
printf '{"backends":[{"name":"mock","base_url":"%s/v1"}],"virtual_keys":[],"router":{}}' "$mock" >"$tmp/gw.json"
for driver in io_uring legacy; do
  env_set=()
  [ "$driver" = legacy ] && env_set=(MONOIO_FORCE_LEGACY_DRIVER=1)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env "${env_set[@]}" strace -f -c -o "$tmp/strace.$driver" ./target/release/ditto-gateway "$tmp/gw.json" \
    --listen "127.0.0.1:$port" --workers 1 2>/dev/null &
  tracer=$!
  sleep 1
  out=$(./target/release/ditto-loadgen --url "http://127.0.0.1:$port/v1/chat/completions" --conns 16 --duration 3)
  # Stop the gateway itself (strace's child), then let strace write its summary.
  pkill -TERM -f "ditto-gateway $tmp/gw.json --listen 127.0.0.1:$port" || true
  wait $tracer 2>/dev/null || true
  n=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['completed'])" "$out")
  total=$(awk '/total/ {print $4}' "$tmp/strace.$driver")
  echo "$driver: $n requests, $total syscalls, $(python3 -c "print(round($total/$n, 2))") per request"
  sort -k4 -n -r "$tmp/strace.$driver" | head -8 | sed 's/^/    /'
done
