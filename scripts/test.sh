#!/usr/bin/env bash
# Fresh machine -> the whole test suite against the real parts (the Apache Kafka broker from its
# Maven jars for the broker-facing tests, tansu for `kafka-pipeline run`, redis-server, the API
# simulator over HTTP, Delta tables in a temp folder). Extra arguments go to pytest.
# KP_TEST_BROKER=tansu runs the broker-facing tests on tansu instead.
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
apt_install java openjdk-17-jdk-headless  # the Apache Kafka broker of the broker-facing tests
apt_install mvn maven  # fetches its jars (pom.xml)
apt_install dot graphviz  # tests/deployment/test_diagrams.py: scripts/diagrams/*.svg are the rendering of scripts/diagrams/*.dot
bash "$ROOT/scripts/fetch-kafka-jars.sh"
bash "$ROOT/scripts/bootstrap.sh" dev
cd "$ROOT"
# the checks that keep the code as it is meant to be: lint (with import order) and types
"$ROOT/.venv/bin/ruff" check .
"$ROOT/.venv/bin/mypy"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
