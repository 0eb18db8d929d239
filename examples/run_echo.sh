#!/usr/bin/env bash
# Runs the echo example against a private vipcd: server and client as separate
# processes, the daemon auto-started by the first of them.
set -euo pipefail
server=$1 client=$2 vipcd=$3
dir=$(mktemp -d /tmp/vipc-example-XXXXXX)
trap 'kill "$spid" 2>/dev/null || true; pkill -f "vipcd --foreground --socket $dir/" 2>/dev/null || true; rm -rf "$dir"' EXIT
export VIPC_RUNTIME_DIR=$dir VIPC_VIPCD=$vipcd
"$server" echo &
spid=$!
"$client" 20000 echo
wait "$spid"
