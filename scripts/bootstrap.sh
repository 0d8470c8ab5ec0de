#!/usr/bin/env bash
# Create .venv (if missing) and install the package with the given extras (default: embedded).
# Sourced by run-embedded.sh and test.sh; re-installs only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-embedded}"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  # the mirror set-up on some machines warns about every missing index folder; keep errors only
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]" 2>&1 | { grep -v -e "is ignored: it is neither" -e "BuildBackendWarning" || true; }
  touch "$STAMP"
fi
