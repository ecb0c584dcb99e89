#!/usr/bin/env bash
# CPU per request of HTTP/2 callers (and of TLS listeners), which the load benchmark (HTTP/1.1
# over plain TCP only) does not have: each gateway binary given serves the load benchmark's
# static upstream (the bench binary re-run as `BENCH_UPSTREAM_PROCESS`), pinned to CPU 1 with
# one tokio worker; `h2load` on CPU 0 sends uncached GETs over h2c (8 connections, 8 streams
# each), and the gateway's CPU time over them comes from /proc (clock ticks, 10 ms here: at
# 200,000 requests, well under 1 %). Rounds alternate the binaries: compare within a round.
#
#   benches/h2.sh BINARY [BINARY ...]      # e.g. /tmp/gw-plain target/pgo/ratepay-gateway
#
# BENCH_H2_REQUESTS (200000) per round, BENCH_H2_ROUNDS (3); BENCH_H2_TLS=1 puts a TLS listener
# in front (a throwaway self-signed P-256 certificate from openssl; h2 by ALPN); BENCH_H2_H1=1
# sends HTTP/1.1 instead (h2load --h1: 8 connections, one request at a time on each). Needs
# h2load (Debian: nghttp2-client), taskset and two CPUs. Copy a `cargo build --release` binary
# before running this: it builds the load benchmark, which overwrites
# target/release/ratepay-gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
[ $# -gt 0 ] || { echo "usage: benches/h2.sh BINARY [BINARY ...]" >&2; exit 1; }
command -v h2load >/dev/null || { echo "h2load is needed (Debian: nghttp2-client)" >&2; exit 1; }
n=${BENCH_H2_REQUESTS:-200000}
work=$(mktemp -d)
bench=$(load_bench_binary "$work/build.log")
tick_us=$((1000000 / $(getconf CLK_TCK)))
up=""
gw=""
trap 'for p in $gw $up; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
BENCH_UPSTREAM_PROCESS=1 taskset -c 0 "$bench" --bench >"$work/upstream" 2>/dev/null &
up=$!
for _ in $(seq 1 100); do [ -s "$work/upstream" ] && break; sleep 0.1; done
upstream=$(head -1 "$work/upstream")
[ -n "$upstream" ] || { echo "the static upstream did not start" >&2; exit 1; }
# The load benchmark's own gateway configuration for that upstream (API key bench-key-0001).
BENCH_GATEWAY_CONFIG="$work" BENCH_UPSTREAM_ADDR="$upstream" "$bench" --bench >"$work/gateway.toml"
scheme=http
if [ -n "${BENCH_H2_TLS:-}" ]; then
  add_tls_listener "$work" "$work/gateway.toml"
  scheme=https
fi
protocol=(-m 8)
[ -z "${BENCH_H2_H1:-}" ] || protocol=(--h1 -m 1) # no pipelining
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# $1 requests to the gateway at $url, from CPU 0.
h2() {
  taskset -c 0 h2load -n "$1" -c 8 "${protocol[@]}" \
    -H 'Authorization: Bearer bench-key-0001' "$url"
}
for round in $(seq 1 "${BENCH_H2_ROUNDS:-3}"); do
  for bin in "$@"; do
    TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin" serve --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
    gw=$!
    port=$(proxy_port "$work/gateway.log" "$gw" 100)
    url="$scheme://127.0.0.1:$port/transaction/management/v2/transactions/bench-tx-0001"
    h2 5000 >/dev/null 2>&1 # warm-up: the upstream pool, the token
    t0=$(cpu_ticks "$gw")
    h2 "$n" >"$work/h2load.out" 2>&1
    t1=$(cpu_ticks "$gw")
    # Every answer a 2xx: a refused or failed request costs less, and would skew the figure.
    ok=$(sed -n 's/.* \([0-9]*\) succeeded, 0 failed, 0 errored.*/\1/p' "$work/h2load.out")
    [ "${ok:-0}" -gt 0 ] || { cat "$work/h2load.out" >&2; exit 1; }
    rate=$(sed -n 's/.*finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$work/h2load.out")
    echo "round $round $bin: $(((t1 - t0) * tick_us / ok)) µs CPU per request, $ok answered, $rate req/s"
    kill "$gw"
    wait "$gw" 2>/dev/null || true
    gw=""
  done
done
