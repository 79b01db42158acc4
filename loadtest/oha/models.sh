#!/usr/bin/env bash
# GET /v1/models (aggregated over every backend by the gateway).
#   BASE_URL=http://127.0.0.1:8080/v1 loadtest/oha/models.sh
set -euo pipefail
BASE_URL=${BASE_URL:-http://127.0.0.1:8080/v1}
exec oha --no-tui -c "${CONNS:-16}" -z "${DURATION:-10s}" "${BASE_URL}/models"
