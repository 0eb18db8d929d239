#!/usr/bin/env bash
# Runs every libFuzzer target of a clang build for a few seconds each.
# Usage: scripts/fuzz.sh [seconds-per-target] [build-dir]
set -euo pipefail
secs=${1:-20}
dir=${2:-build/asan}
cd "$(dirname "$0")/.."
found=0
for f in "$dir"/tests/fuzz/*_fuzz; do
  [ -x "$f" ] || continue
  found=1
  corpus=$(mktemp -d)
  echo "fuzz: $(basename "$f") for ${secs}s"
  "$f" -max_total_time="$secs" -print_final_stats=1 "$corpus" 2>&1 | tail -n 12
  rm -rf "$corpus"
done
if [ "$found" -eq 0 ]; then
  echo "fuzz: no fuzz targets in $dir (needs a clang build)" >&2
  exit 1
fi
