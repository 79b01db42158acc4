#!/usr/bin/env bash
# Streaming (SSE) chat completions with oha; oha times each request to the end of its stream.
#   BASE_URL=http://127.0.0.1:8080/v1 CONNS=100 DURATION=30s loadtest/oha/chat_stream.sh
set -euo pipefail
BASE_URL=${BASE_URL:-http://127.0.0.1:8080/v1}
auth=()
[ -n "${API_KEY:-}" ] && auth=(-H "authorization: Bearer ${API_KEY}")
exec oha --no-tui -c "${CONNS:-100}" -z "${DURATION:-30s}" -m POST \
  -H 'content-type: application/json' -H 'accept: text/event-stream' "${auth[@]}" \
  -d "{\"model\":\"${MODEL:-gpt-4o-mini}\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Count to twenty.\"}]}" \
  "${BASE_URL}/chat/completions"
