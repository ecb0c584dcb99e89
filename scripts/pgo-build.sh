#!/usr/bin/env bash
# A profile-guided (PGO) release build of the gateway: the build to ship when CPU per request
# matters. 11 to 13 % less CPU per uncached GET, 8 to 13 % per cancellation with audit off, 7 to
# 20 % per cache hit and 2 to 4 % per audited cancellation, measured pinned in paired slices against
# `cargo build --release` of the same source (docs/performance.md, session 19).
#
#   scripts/pgo-build.sh            # then: target/pgo/ratepay-gateway
#
# Three steps, about 12 minutes on 2 cores:
#   1. an instrumented release build (`-Cprofile-generate`, its own target directory);
#   2. training: that binary serves the load benchmark's gateway cases (HTTP/1.1 callers; an
#      uncached GET through the whole stack, a cache hit, cancellations audited and not, an
#      upstream over TLS: `PGO_TRAIN_SECS` per phase, 2 by default), then the embedded sandbox
#      (`config/local.toml` on free ports): a transaction and an HPP session created, the
#      token endpoint, then GETs of them over h2c with the API key and with a token from it
#      (h2load); then the same behind a TLS listener (a throwaway self-signed certificate from
#      openssl), over h2 and HTTP/1.1; so that HTTP/2, JWT and TLS callers and the sandbox are
#      not left out of the profile; every training request must succeed;
#   3. the release build again with the merged profile (`-Cprofile-use`).
# What the training does not exercise (client certificates, reload, the cluster's Redis
# paths) is compiled as code the profile saw rarely or never: LLVM optimises it for size. It
# works the same, and may cost more CPU than in a plain build (the cluster's path was measured
# and did not: docs/performance.md, session 20): measure such a deployment's own path before
# shipping (the load benchmark's BENCH_GATEWAY_BIN and BENCH_BASELINE_BIN).
# Needs the rustup component llvm-tools (installed here when missing), curl, h2load and openssl
# (without h2load, HTTP/2 and TLS callers are left out of the training, with a warning). The profile is
# only valid for the source it was trained on, so rebuild after every change.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
out=target/pgo
profiles="$PWD/$out/profiles"
rm -rf "$profiles"
mkdir -p "$profiles"

profdata=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)
if [ -z "$profdata" ]; then
  rustup component add llvm-tools
  profdata=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)
fi
[ -n "$profdata" ] || { echo "llvm-profdata not found (rustup component add llvm-tools)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed for the h2c training" >&2; exit 1; }

echo "== 1/3 instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$profiles" cargo build --release --locked --target-dir "$out/gen"
gen="$PWD/$out/gen/release/ratepay-gateway"

echo "== 2/3 training" >&2
# The load benchmark's own binary (its gateway cases start $gen as BENCH_GATEWAY_BIN).
bench=$(load_bench_binary "$out/bench-build.log")
BENCH_GATEWAY_BIN="$gen" BENCH_SECS="${PGO_TRAIN_SECS:-2}" \
  BENCH_CASES=uncached,nolog,cached,unaudited,audited,tls "$bench" --bench >"$out/train.log" 2>&1 ||
  { tail -20 "$out/train.log" >&2; exit 1; }
# A gateway killed (not stopped by SIGTERM) writes no profile: its cases would be missing.
if grep -q "did not stop" "$out/train.log"; then
  grep "did not stop" "$out/train.log" >&2
  echo "a trained gateway was killed before writing its profile" >&2
  exit 1
fi

# The embedded sandbox behind the instrumented gateway (free ports, rate limits lifted): first
# plain (h2c), then with a TLS listener.
work=$(mktemp -d)
gw=""
trap 'if [ -n "$gw" ]; then kill "$gw" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
local_gateway_toml "$work"

# Starts the instrumented gateway on config $1; sets gw and base (scheme $2).
start_gateway() {
  "$gen" serve --config "$1" >"$work/gateway.log" 2>&1 &
  gw=$!
  local port
  port=$(proxy_port "$work/gateway.log" "$gw") || exit 1
  base="$2://127.0.0.1:$port"
}

# SIGTERM, so that it writes its profile.
stop_gateway() {
  kill -TERM "$gw"
  wait "$gw" || true
  gw=""
}

# A transaction and an HPP session to read (the sandbox starts empty: unknown ids are 404s);
# sets tx and sid.
create_records() {
  curl -sk -H 'Authorization: Bearer demo-key' -H 'Content-Type: application/json' \
    -d '{"currency":"EUR","buyer":{"first_name":"Ada","last_name":"Lovelace","contact":{"email":"ada@example.com"}},"shop_baskets":[{"gross_amount":25.50}]}' \
    "$base/transaction/management/v2/transactions" >"$work/transaction.json"
  tx=$(sed -n 's/.*"ratepay_transaction_id":"\([^"]*\)".*/\1/p' "$work/transaction.json")
  curl -sk -H 'Authorization: Bearer demo-key' -H 'Content-Type: application/json' \
    -d '{"order_data":{"shop_baskets":[{"gross_amount":10.0}],"currency":"EUR","buyer":{"contact":{"email":"ada@example.com"}}}}' \
    "$base/pps/api/v1/session" >"$work/session.json"
  sid=$(sed -n 's/.*"session_id":"\([^"]*\)".*/\1/p' "$work/session.json")
  [ -n "$tx" ] && [ -n "$sid" ] ||
    { echo "the sandbox created no transaction or session: $(cat "$work/transaction.json" "$work/session.json")" >&2; exit 1; }
}

# h2load (Debian: nghttp2-client): 20,000 GETs on 4 connections with 8 streams each, as
# caller $1, of path $2, with h2load's options $3...; every answer must be a 2xx.
h2() {
  local auth=$1 path=$2
  shift 2
  h2load -n "${PGO_H2_REQUESTS:-20000}" -c 4 -m 8 "$@" -H "Authorization: $auth" "$base$path" \
    >"$work/h2load.out" 2>&1
  grep -q " 0 failed, 0 errored" "$work/h2load.out" ||
    { cat "$work/h2load.out" >&2; echo "h2load training requests failed ($path)" >&2; exit 1; }
}
has_h2load=$(command -v h2load || true)
[ -n "$has_h2load" ] ||
  echo "h2load not found (Debian: nghttp2-client): HTTP/2 and TLS callers are left out of the profile" >&2

# Plain: the token endpoint (200 tokens), then, over h2c, the transaction's status and the
# session record (cache hits) with the API key, and the transaction with a token.
start_gateway "$work/gateway.toml" http
secret=$(tr -d '\n' <config/local/demo-client-secret)
# The request body in a file, not on curl's command line, where `ps` would show the secret.
printf '{"client_id":"demo","client_secret":"%s","grant_type":"client_credentials","audience":"https://api-integration.ratepay.com/transaction/management"}' \
  "$secret" >"$work/token-request.json"
for _ in $(seq 200); do
  curl -s -H 'Content-Type: application/json' -d @"$work/token-request.json" "$base/oauth/token" >"$work/token.json"
done
jwt=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' "$work/token.json")
[ -n "$jwt" ] || { echo "the token endpoint gave no token: $(cat "$work/token.json")" >&2; exit 1; }
create_records
if [ -n "$has_h2load" ]; then
  h2 "Bearer demo-key" "/transaction/status/v2/transactions/$tx"
  h2 "Bearer demo-key" "/pps/api/v1/session-record/$sid"
  h2 "Bearer $jwt" "/transaction/management/v2/transactions/$tx"
fi
stop_gateway

# A TLS listener (a throwaway self-signed certificate): HTTP/2 and HTTP/1.1 callers over TLS.
if [ -n "$has_h2load" ] && command -v openssl >/dev/null; then
  cp "$work/gateway.toml" "$work/tls.toml"
  add_tls_listener "$work" "$work/tls.toml"
  start_gateway "$work/tls.toml" https
  create_records
  h2 "Bearer demo-key" "/transaction/status/v2/transactions/$tx"
  h2 "Bearer demo-key" "/pps/api/v1/session-record/$sid" --h1
  stop_gateway
else
  echo "no openssl or h2load: a TLS listener is left out of the profile" >&2
fi

echo "== 3/3 build with the profile" >&2
ls "$profiles"/*.profraw >/dev/null 2>&1 || { echo "no profile was written to $profiles" >&2; exit 1; }
"$profdata" merge -o "$out/merged.profdata" "$profiles"
RUSTFLAGS="-Cprofile-use=$PWD/$out/merged.profdata" \
  cargo build --release --locked --target-dir "$out/use"
cp "$out/use/release/ratepay-gateway" "$out/ratepay-gateway"
echo "profile-guided build: $out/ratepay-gateway" >&2
