#!/usr/bin/env bash
# Memory figures: the idle resident size of the gateway and the UserService (separate release processes), and
# what N open SSE watchers add to each. Usage: scripts/bench-memory.sh [watchers=500]. Needs curl.
set -euo pipefail
cd "$(dirname "$0")/.."
watchers="${1:-500}"
cargo build --release --quiet --bin portico
bin=target/release/portico
work="$(mktemp -d)"
cleanup() { pkill -P $$ curl 2>/dev/null || true; kill "${gateway:-}" "${users:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

addr_of() { # waits for "<what> listening addr=…" in a log file
  for _ in $(seq 100); do
    if addr=$(grep -o 'addr=[0-9.:]*' "$1" | head -1 | cut -d= -f2) && [ -n "$addr" ]; then echo "$addr"; return; fi
    sleep 0.1
  done
  echo "no address in $1" >&2; exit 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

RUST_LOG=warn,portico=info "$bin" user-service --listen 127.0.0.1:0 --db "$work/users.db" 2>"$work/users.log" & users=$!
users_addr=$(addr_of "$work/users.log")
RUST_LOG=warn,portico=info "$bin" gateway --listen 127.0.0.1:0 --upstream "http://$users_addr" 2>"$work/gateway.log" & gateway=$!
gateway_addr=$(addr_of "$work/gateway.log")
curl -s "http://$gateway_addr/v1/users" >/dev/null   # one request, so connections and routes are warm
sleep 1
idle_gateway=$(rss_kib "$gateway"); idle_users=$(rss_kib "$users")
for _ in $(seq "$watchers"); do
  curl -s -N -H 'Accept: text/event-stream' "http://$gateway_addr/v1/users:watch" >/dev/null &
done
sleep 5
busy_gateway=$(rss_kib "$gateway"); busy_users=$(rss_kib "$users")
echo "cores: $(nproc)"
echo "idle RSS:            gateway $((idle_gateway / 1024)) MiB, UserService $((idle_users / 1024)) MiB"
echo "with $watchers SSE watchers: gateway $((busy_gateway / 1024)) MiB, UserService $((busy_users / 1024)) MiB"
echo "per watcher:         gateway $(( (busy_gateway - idle_gateway) / watchers )) KiB, UserService $(( (busy_users - idle_users) / watchers )) KiB"
