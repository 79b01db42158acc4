#!/usr/bin/env bash
# Run the gateway on 127.0.0.1:8080 in front of the bundled mock upstream (127.0.0.1:18081), so
# there is something to curl with no provider key and no network. Ctrl-C stops both.
#   curl -sS http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
#     -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}'
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin ditto-gateway --bin mock-upstream
./target/release/mock-upstream --listen 127.0.0.1:18081 --events 5 --delay-ms 50 &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
exec_status=0
./target/release/ditto-gateway examples/gateway.mock.json --listen "${LISTEN:-127.0.0.1:8080}" "$@" || exec_status=$?
exit $exec_status
