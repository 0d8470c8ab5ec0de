#!/usr/bin/env bash
# The Apache Kafka broker jars named by pom.xml, into a cache outside git (KAFKA_JARS_DIR,
# default ~/.cache/kafka-pipeline/kafka-jars). Does nothing when that version is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${KAFKA_JARS_DIR:-$HOME/.cache/kafka-pipeline/kafka-jars}"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/pom.xml")"
if [ -f "$DEST/kafka_2.13-$VERSION.jar" ]; then
  exit 0
fi
if ! command -v mvn >/dev/null 2>&1; then
  echo "Maven (mvn) is needed to fetch the Apache Kafka $VERSION jars: install it (e.g. apt-get install maven)" >&2
  exit 1
fi
echo "fetching the Apache Kafka $VERSION jars into $DEST ..."
started=$(date +%s)
# into a fresh folder first: a half-finished fetch never looks complete
rm -rf "$DEST.partial"
mvn -B -q -f "$ROOT/pom.xml" dependency:copy-dependencies -DoutputDirectory="$DEST.partial"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "fetched $(ls "$DEST" | wc -l) jars in $(( $(date +%s) - started ))s"
