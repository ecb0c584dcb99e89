#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a figure that does not move with
# the scheduler, the host or the other VMs on it, for comparing two builds of the gateway when
# the CPU-time figures of `cargo bench --bench load` are too noisy to show a change of a few
# per cent (on a shared VM they can move by 20 % from one round to the next).
#
#   benches/instructions.sh [BINARY [BINARY ...]]
#
# Each binary (default: target/release/ratepay-gateway, built first) serves config/local.toml
# with its embedded sandbox, on free loopback ports, under callgrind with instrumentation off.
# A client sends 100 warm-up requests on one keep-alive connection, instrumentation is turned
# on, N more requests are sent (BENCH_REQUESTS, 1000), and it is turned off again. The figure
# is every instruction the process ran over those N requests, divided by N: the gateway, its
# hyper server and client, tokio, the access log writer and the in-process sandbox (whose share,
# its JWT verification mostly, is the same for every build of the same sandbox code).
# Three cases by default, each on a fresh process:
#   uncached   GET of a transaction's status: the whole stack to the sandbox (its 404 answer);
#   cached     GET of a session record: a cache hit after the warm-up (the sandbox's 404 for it
#              is cached like any record);
#   cancel     POST cancellation with a fresh Idempotency-Key each: fingerprint, idempotency
#              slot, the audit intent and outcome (fdatasync is a system call: not counted), the
#              sandbox's 404 stored as the key's answer.
# BENCH_CASES picks some (a comma list); BENCH_METHOD and BENCH_PATH replace them with one
# request of your own. Two runs of the same binary agree to about 0.02 %.
# BENCH_IDEMPOTENCY_BYTES sets the idempotency store's max_bytes (local.toml: 64 MiB). At its
# floor, 1048576, the store is full after about 500 cancellations, so `cancel` then counts a
# full store's eviction with every new key, as a store in production does after a busy day.
#
# What it cannot say: time. Two kinds of work are counted far above their cost, so each line
# also gives their share: a large memcpy is `rep movsb`, one instruction per byte copied here
# and a few cycles per 64 bytes on the CPU (an 11 KB copy: 11k instructions, about 0.2 µs);
# and SHA-256 runs in software, because valgrind hides the CPU's SHA extensions that sha2 and
# aws-lc use outside it. A cache miss or a wake-up costs nothing here. Use it to see whether a
# change removed work, and the pinned load benchmark to see what that work cost in time.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || {
  echo "valgrind is not installed (Debian: apt-get install valgrind)" >&2
  exit 1
}
command -v python3 >/dev/null || { echo "python3 is needed for the client" >&2; exit 1; }
if [ $# -eq 0 ]; then
  cargo build --release --locked
  set -- target/release/ratepay-gateway
fi
N=${BENCH_REQUESTS:-1000}
case_request() {
  case "$1" in
    uncached) echo "GET /transaction/status/v2/transactions/instructions-bench" ;;
    cached) echo "GET /pps/api/v1/session-record/instructions-bench" ;;
    cancel) echo "POST /transaction/management/v2/transactions/instructions-bench/cancellations" ;;
    *) echo "unknown case $1 (uncached, cached, cancel)" >&2; exit 1 ;;
  esac
}
if [ -n "${BENCH_PATH:-}" ]; then
  requests=("${BENCH_METHOD:-GET} $BENCH_PATH")
else
  requests=()
  IFS=, read -r -a cases <<<"${BENCH_CASES:-uncached,cached,cancel}"
  for c in "${cases[@]}"; do requests+=("$(case_request "$c")"); done
fi
work=$(mktemp -d)
vg=""
# On any exit (a refused request, a client error): no gateway left running under valgrind.
trap 'if [ -n "$vg" ]; then kill "$vg" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
. benches/lib.sh
local_gateway_toml "$work"
if [ -n "${BENCH_IDEMPOTENCY_BYTES:-}" ]; then
  # The first max_bytes is [idempotency]'s (the cache's comes later).
  sed -i "0,/^max_bytes = .*/s//max_bytes = ${BENCH_IDEMPOTENCY_BYTES}/" "$work/gateway.toml"
fi

profiles=0
for request in "${requests[@]}"; do
  METHOD=${request%% *}
  URL_PATH=${request#* }
  for bin in "$@"; do
    out="$work/callgrind.out"
    log="$work/gateway.log"
    rm -f "$out"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
      "$bin" serve --config "$work/gateway.toml" >"$log" 2>&1 &
    vg=$!
    port=$(proxy_port "$log" "$vg" 600) || { echo "$bin did not start" >&2; exit 1; }
    python3 - "$port" "$N" "$METHOD" "$URL_PATH" "$vg" <<'PY'
import collections, http.client, subprocess, sys, uuid
port, n, method, path, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
def one():
    headers = {"Authorization": "Bearer demo-key"}
    body = None
    if method == "POST":
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = str(uuid.uuid4())
        body = '{"gross_amount":10.00,"partner_operation_id":"op-bench"}'
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status
for _ in range(100):
    one()
subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
statuses = collections.Counter(one() for _ in range(n))
subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)
print("statuses:", dict(statuses), file=sys.stderr)
if any(s == 429 or s >= 500 for s in statuses):
    sys.exit("some requests were refused or failed; the count would mix two paths")
PY
    kill -INT "$vg"
    wait "$vg" || true
    vg=""
    annotated=$(callgrind_annotate --auto=no --threshold=100 "$out" 2>/dev/null)
    total=$(sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' <<<"$annotated" | head -1 | tr -d ,)
    [ -n "$total" ] || { echo "no instruction count for $bin" >&2; exit 1; }
    # Self costs of two kinds of work callgrind miscounts (see the top of this file); printed
    # as integers, since awk's default format turns large sums into 4.6e+09.
    self_of() {
      grep -E "$1" <<<"$annotated" | awk '{gsub(",", "", $1); s += $1} END {printf "%.0f\n", s}'
    }
    copies=$(self_of 'mem(cpy|move)[a-z_]*(erms|unaligned)')
    sha=$(self_of 'sha256|compress256')
    echo "$bin: $((total / N)) instructions per request ($METHOD $URL_PATH, $N requests);" \
      "of which memcpy $((copies / N)), SHA-256 $((sha / N))"
    if [ -n "${BENCH_KEEP:-}" ]; then
      kept="${BENCH_KEEP}.$(basename "$bin").$METHOD.$((++profiles))"
      cp "$out" "$kept"
      echo "  profile kept: $kept (callgrind_annotate --inclusive=yes FILE)"
    fi
  done
done
