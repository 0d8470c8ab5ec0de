#!/usr/bin/env bash
# Fresh machine -> the whole test suite against the real parts (the Apache Kafka broker from its
# Maven jars for the broker-facing tests, tansu for `kafka-pipeline run`, redis-server, the API
# simulator over HTTP, Delta tables in a temp folder). Extra arguments go to pytest.
# KP_TEST_BROKER=tansu runs the broker-facing tests on tansu instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server with apt-get..."
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is needed by the tests: install it (e.g. sudo apt-get install redis-server)" >&2
    exit 1
  fi
fi
for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing a JDK and Maven with apt-get (the Apache Kafka broker of the tests)..."
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
      break
    fi
    echo "$tool is needed by the tests (Apache Kafka broker): install a JDK 17+ and Maven" >&2
    exit 1
  fi
done
bash "$ROOT/scripts/fetch-kafka-jars.sh"
bash "$ROOT/scripts/bootstrap.sh" dev
cd "$ROOT"
# the checks that keep the code as it is meant to be: lint (with import order) and types
"$ROOT/.venv/bin/ruff" check .
"$ROOT/.venv/bin/mypy"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
