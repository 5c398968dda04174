#!/bin/sh
# Regenerates requirements.lock (the image's hash-locked dependencies) from pyproject.toml:
# the runtime dependencies, the `fast` extra (uvloop) and the build backend (setuptools, so the
# image builds the project itself without fetching anything unlocked).
#
#   sh docker/lock.sh              # same pins, hashes refreshed; review `git diff requirements.lock`
#   sh docker/lock.sh --upgrade    # newest versions pyproject.toml allows
#
# pip-tools runs in a throwaway virtualenv (never the project's .venv), with pip's user and site
# configuration ignored so that only PyPI's files (and so PyPI's hashes) end up in the lock.
# Run it with Python 3.11 on Linux, as the image is (environment markers are resolved for the
# machine that runs pip-compile): PYTHON=python3.11 sh docker/lock.sh
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIP_TOOLS_VERSION=${PIP_TOOLS_VERSION:-7.6.2}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT 2>/dev/null || true

"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "pip-tools==$PIP_TOOLS_VERSION"
CUSTOM_COMPILE_COMMAND="sh docker/lock.sh" "$tmp/venv/bin/pip-compile" \
  --quiet --resolver=backtracking \
  --generate-hashes --allow-unsafe --strip-extras \
  --extra fast --build-deps-for wheel \
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --cache-dir "$tmp/cache" \
  --output-file requirements.lock \
  "$@" pyproject.toml
echo "wrote requirements.lock"
