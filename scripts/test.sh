#!/usr/bin/env bash
# Fresh machine -> the whole test suite against the real parts (tansu broker, redis-server,
# API simulator over HTTP, Delta tables in a temp folder). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Debian packages the tests run for real: redis-server (shared cache), prometheus (promtool for the
# alert rules' unit tests, the server for the end-to-end scrape of the dashboards' expressions).
apt_install() {  # <command> <package>
  if ! command -v "$1" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing $2 with apt-get..."
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
      echo "$1 is needed by the tests: install it (e.g. sudo apt-get install $2)" >&2
      exit 1
    fi
  fi
}
apt_install redis-server redis-server
apt_install promtool prometheus
bash "$ROOT/scripts/bootstrap.sh" dev
cd "$ROOT"
# the checks that keep the code as it is meant to be: lint (with import order) and types
"$ROOT/.venv/bin/ruff" check .
"$ROOT/.venv/bin/mypy"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
