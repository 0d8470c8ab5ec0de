#!/usr/bin/env bash
# scripts/diagrams/*.dot -> scripts/diagrams/*.svg with Graphviz (Debian: apt-get install graphviz). The SVGs are
# committed; tests/deployment/test_diagrams.py checks that each is the rendering of its current source.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v dot >/dev/null || { echo "render-diagrams.sh: Graphviz's dot is needed (apt-get install graphviz)" >&2; exit 1; }
for source in "$ROOT"/scripts/diagrams/*.dot; do
  dot -Tsvg "$source" -o "${source%.dot}.svg"
  echo "${source%.dot}.svg"
done
