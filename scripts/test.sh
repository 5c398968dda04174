#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite against real MariaDB servers it starts;
# then, unless tests were named (a path argument), the integration suite again with the fast
# path off: both executors of a statement's plan (proxy/protocol/plan.py) must pass the same tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
for arg in "$@"; do
  [ -e "${arg%%::*}" ] && exit 0  # tests were named: only those
done
JITPROXY_TEST_FAST_PATH=off .venv/bin/python -m pytest "$@" tests/integration
