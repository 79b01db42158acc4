#!/usr/bin/env bash
# Non-streaming chat completions with oha (cargo install oha --locked).
#   BASE_URL=http://127.0.0.1:8080/v1 CONNS=64 DURATION=30s loadtest/oha/chat.sh
set -euo pipefail
BASE_URL=${BASE_URL:-http://127.0.0.1:8080/v1}
auth=()
[ -n "${API_KEY:-}" ] && auth=(-H "authorization: Bearer ${API_KEY}")
exec oha --no-tui -c "${CONNS:-64}" -z "${DURATION:-30s}" -m POST \
  -H 'content-type: application/json' "${auth[@]}" \
  -d "{\"model\":\"${MODEL:-gpt-4o-mini}\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}]}" \
  "${BASE_URL}/chat/completions"
