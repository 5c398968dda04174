#!/usr/bin/env bash
# Installs what jitproxy's demo and tests need on a Debian/Ubuntu machine (idempotent):
# MariaDB and PostgreSQL from the distribution, and a Python virtualenv in .venv with the project.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
command -v sysbench >/dev/null 2>&1 || need+=(sysbench)               # bench/sysbench.py
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)     # JDBC client tests
[ -f /usr/share/java/mariadb-java-client.jar ] || need+=(libmariadb-java)
# The PostgreSQL state-store tests (Debian keeps initdb/postgres in /usr/lib/postgresql/N/bin).
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v openssl >/dev/null 2>&1 || need+=(openssl)                # docker/gen-secrets.sh (tests/deploy)
# The web console's end-to-end test (tests/console/test_browser.py): Debian's headless Chromium,
# driven by Playwright through executable_path (Playwright's own browser download is never used).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts the packaged servers; jitproxy starts its own in temp directories instead.
  $SUDO systemctl disable --now mariadb >/dev/null 2>&1 || true
  $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
  # Without systemd (containers) the package started its cluster through pg_ctlcluster.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    { pg_lsclusters --no-header 2>/dev/null || true; } | while read -r version cluster _; do
      $SUDO pg_ctlcluster "$version" "$cluster" stop </dev/null >/dev/null 2>&1 || true
    done
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.jitproxy-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,fast]"
  touch "$stamp"
fi
