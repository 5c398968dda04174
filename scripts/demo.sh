#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the demo: local MariaDB with sample data, a local IdP for
# `jitproxy login`, the proxy and tokens for `admin` and `dev`. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/jitproxy demo --dir "${DEMO_DIR:-demo}" "$@"
