#!/usr/bin/env bash
# Runs the SSE fan-out benchmark (benches/sse_fanout.rs) in the release-based bench profile, from the repository
# root: 10,000 watchers on /v1/users:watch through one gateway, then one create; prints the delivery delays and
# each server's memory and CPU, and writes target/bench/sse_fanout.json.
# Options pass through, e.g. `scripts/bench-sse.sh --watchers 1000 --events 3 --format ndjson`;
# `scripts/bench-sse.sh --help` lists them, and each also reads a BENCH_SSE_* environment variable.
# It needs an open-files hard limit above the watcher count (it raises its soft limit itself, as portico does).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench sse_fanout -- "$@"
