#!/usr/bin/env bash
# Fresh machine -> the whole pipeline on its embedded default (tansu broker, API simulator,
# local Delta folder ./data/delta), replaying the bundled sample events until they are written.
# Extra arguments go to `kafka-pipeline run` (e.g. --events FILE, or no --until-drained).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" embedded
cd "$ROOT"
if [ "$#" -eq 0 ]; then set -- --until-drained; fi
exec "$ROOT/.venv/bin/kafka-pipeline" run "$@"
