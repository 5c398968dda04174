#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite against real MariaDB servers it starts;
# then, when no tests were named, the integration suite again with the fast path off: both
# executors of a statement's plan (proxy/protocol/plan.py) must pass the same tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
for arg in "$@"; do
  case "$arg" in -*) ;; *) exit 0 ;; esac  # tests were named: only those
done
JITPROXY_TEST_FAST_PATH=off .venv/bin/python -m pytest "$@" tests/integration
