#!/usr/bin/env bash
# Every test, on both monoio I/O drivers: unit tests and the integration suite on the default
# driver (io_uring where the kernel allows it), then the integration suite again forced onto
# the legacy epoll driver, since containers often block io_uring.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-features
MONOIO_FORCE_LEGACY_DRIVER=1 cargo test --all-features --test integration
# The official OpenAI Python SDK through the translation paths (issue 6); it skips itself,
# with a message, when python3 or pip cannot provide the SDK.
bash scripts/sdk_test.sh
