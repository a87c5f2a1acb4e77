#!/usr/bin/env bash
# Runs the gateway benchmark (benches/gateway.rs) in the release-based bench profile, from the repository root.
# Options pass through, e.g. `scripts/bench.sh --seconds 30 --workers 64`; `scripts/bench.sh --help` lists them,
# and each also reads a BENCH_* environment variable (BENCH_SECONDS=3 scripts/bench.sh).
# The last phase runs the REST GET load against 3 UserService replicas behind one gateway; --replicas 0 skips it.
# Prints a table and writes target/bench/gateway.json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench gateway -- "$@"
