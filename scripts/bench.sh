#!/usr/bin/env bash
# Runs the gateway benchmark (benches/gateway.rs) in the release-based bench profile, from the repository root.
# Options pass through, e.g. `scripts/bench.sh --seconds 30 --workers 64`; `scripts/bench.sh --help` lists them,
# and each also reads a BENCH_* environment variable (BENCH_SECONDS=3 scripts/bench.sh).
# The last phase runs the REST GET load against 3 UserService replicas behind one gateway; --replicas 0 skips it.
# Then REST POST and GET through one gateway over 2 replicas sharing a PostgreSQL database that the bench creates
# and drops (BENCH_POSTGRES, default postgres://root@127.0.0.1:5432/postgres), with a nats-server it starts for
# the event figures; --postgres-replicas 0 skips that phase.
# Before those, the tracing phase runs REST GET with tracing off and then with both servers exporting every trace
# (--otlp-endpoint at an OTLP collector inside the benchmark, --trace-sample-ratio 1.0) and reports the CPU per
# request of each mode; --tracing-phase false skips it.
# Prints a table and writes target/bench/gateway.json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench gateway -- "$@"
