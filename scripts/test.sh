#!/usr/bin/env bash
# Builds vipc with a CMake preset (default: release) and runs the whole test suite
# (unit, integration, stress) with CTest. Usage: scripts/test.sh [release|asan|tsan|clang]
set -euo pipefail
preset=${1:-release}
cd "$(dirname "$0")/.."
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$(nproc)"
# Serial on purpose: the multi-process tests measure nothing, but two of them spinning
# on a 2-CPU machine at once would only slow each other down.
ctest --preset "$preset" --timeout 900
