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
# BENCH_METHOD (GET) and BENCH_PATH (an uncached transaction-status GET that goes through the
# whole stack to the sandbox) choose the request. Two runs of the same binary agree to about
# 0.02 %.
#
# What it cannot say: time. A memcpy counts one instruction per byte copied here and costs a
# few cycles per 64 bytes on the CPU, and a cache miss or a wake-up costs nothing here. Use it
# to see whether a change removed work, and the pinned load benchmark to see what that work
# cost in time.
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
METHOD=${BENCH_METHOD:-GET}
URL_PATH=${BENCH_PATH:-/transaction/status/v2/transactions/instructions-bench}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# local.toml on free ports, its audit log in the scratch directory.
sed -e 's|^proxy = .*|proxy = "127.0.0.1:0"|' -e 's|^admin = .*|admin = "127.0.0.1:0"|' \
  -e "s|^path = \"var/audit/audit.jsonl\"|path = \"$work/audit/audit.jsonl\"|" \
  config/local.toml >"$work/gateway.toml"

for bin in "$@"; do
  out="$work/callgrind.out"
  log="$work/gateway.log"
  rm -f "$out"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" serve --config "$work/gateway.toml" >"$log" 2>&1 &
  vg=$!
  port=""
  for _ in $(seq 1 600); do
    port=$(sed -n 's/.*listening proxy 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
    [ -n "$port" ] && break
    kill -0 "$vg" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { echo "$bin did not start" >&2; kill "$vg"; exit 1; }
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
        body = "{}"
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
PY
  kill -INT "$vg"
  wait "$vg" || true
  total=$(callgrind_annotate "$out" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) *(100.0%) *PROGRAM TOTALS.*/\1/p; s/^ *\([0-9,]*\) *PROGRAM TOTALS.*/\1/p' | head -1 | tr -d ,)
  [ -n "$total" ] || { echo "no instruction count for $bin" >&2; exit 1; }
  echo "$bin: $((total / N)) instructions per request ($METHOD $URL_PATH, $N requests)"
  if [ -n "${BENCH_KEEP:-}" ]; then
    cp "$out" "${BENCH_KEEP}.$(basename "$bin").$$"
    echo "  profile kept: ${BENCH_KEEP}.$(basename "$bin").$$ (callgrind_annotate --inclusive=yes FILE)"
  fi
done
