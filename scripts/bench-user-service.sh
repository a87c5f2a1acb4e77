#!/usr/bin/env bash
# Runs the UserService benchmark (benches/user_service.rs) in the release-based bench profile, from the repository
# root: GetUser and CreateUser CPU per request of `portico user-service` on SQLite next to an in-memory tonic floor,
# and, with --watchers N, the UserService's memory with N open WatchUsers streams and the delay of one event to all.
# Options pass through (`scripts/bench-user-service.sh --help`), e.g. `--seconds 8 --watchers 10000`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each watch connection and the servers' files need descriptors; 10,000 streams share a few connections, but
# raise the limit anyway where the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo bench --bench user_service -- "$@"
