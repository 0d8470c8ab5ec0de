#!/usr/bin/env bash
# .env for docker-compose.yml: a copy of .env.example with each empty *_PASSWORD a fresh random
# value and CLAIMX_API_TOKEN the simulator's token for it. An existing file is left as it is.
#   bash config/docker/make-env.sh [ENV_FILE]     (default: .env next to docker-compose.yml)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/.env}"
if [ -e "$OUT" ]; then
  echo "$OUT exists: kept as it is (remove it to make a new one)"
  exit 0
fi
random_secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }  # 32 hex digits
umask 077  # the file holds secrets: readable by its owner only
simulator_password=""
tmp="$(mktemp "$OUT.XXXXXX")"
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    CLAIMX_SIMULATOR_PASSWORD=)
      simulator_password="$(random_secret)"
      line="$line$simulator_password" ;;
    *_PASSWORD=) line="$line$(random_secret)" ;;
    CLAIMX_API_TOKEN=)
      [ -n "$simulator_password" ] || { echo "CLAIMX_SIMULATOR_PASSWORD must come before CLAIMX_API_TOKEN in .env.example" >&2; rm -f "$tmp"; exit 1; }
      line="$line$(printf 'claimx:%s' "$simulator_password" | base64 | tr -d '\n')" ;;
  esac
  printf '%s\n' "$line"
done < "$ROOT/.env.example" > "$tmp"
mv "$tmp" "$OUT"
echo "wrote $OUT (random passwords; Grafana's admin password: grep GRAFANA_ADMIN_PASSWORD $OUT)"
