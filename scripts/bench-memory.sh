#!/usr/bin/env bash
# Memory figures: the idle resident size of the gateway and the UserService (separate release processes), and
# what N open SSE watchers add to each, with one event delivered to all of them. Usage:
# scripts/bench-memory.sh [watchers=500]. It runs the fan-out benchmark (scripts/bench-sse.sh), which has more
# options.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/bench-sse.sh --watchers "${1:-500}"
