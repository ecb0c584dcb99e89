#!/usr/bin/env bash
# A profile-guided (PGO) release build of the gateway: the build to ship when CPU per request
# matters. About 12 % less CPU per uncached GET and per cache hit, 8 % per cancellation with
# audit off, measured pinned in paired slices against `cargo build --release` of the same
# source (README, Performance, session 19).
#
#   scripts/pgo-build.sh            # then: target/pgo/ratepay-gateway
#
# Three steps, about 15 minutes on 2 cores:
#   1. an instrumented release build (`-Cprofile-generate`, its own target directory);
#   2. training: that binary serves the load benchmark's gateway cases (HTTP/1.1 callers; an
#      uncached GET through the whole stack, a cache hit, cancellations audited and not, an
#      upstream over TLS: `PGO_TRAIN_SECS` per phase, 2 by default), then the embedded sandbox
#      (`config/local.toml` on free ports): its token endpoint, then GETs over h2c with the API
#      key and with a token from it (h2load), so that HTTP/2 callers, JWT callers and the
#      sandbox are not left out of the profile;
#   3. the release build again with the merged profile (`-Cprofile-use`).
# What the training does not exercise (a TLS or mTLS listener, reload, the cluster's Redis
# paths) is compiled as code the profile saw rarely or never: LLVM optimises it for size. It
# works the same, and may cost more CPU than in a plain build: measure such a deployment's own
# path before shipping (the load benchmark's BENCH_GATEWAY_BIN and BENCH_BASELINE_BIN).
# Needs the rustup component llvm-tools (installed here when missing), curl and h2load
# (without it, HTTP/2 callers are left out of the training, with a warning). The profile is
# only valid for the source it was trained on, so rebuild after every change.
set -euo pipefail
cd "$(dirname "$0")/.."
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
bench=$(cargo bench --locked --bench load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "the load benchmark did not build" >&2; exit 1; }
BENCH_GATEWAY_BIN="$gen" BENCH_SECS="${PGO_TRAIN_SECS:-2}" \
  BENCH_CASES=uncached,nolog,cached,unaudited,audited,tls "$bench" --bench >"$out/train.log" 2>&1 ||
  { tail -20 "$out/train.log" >&2; exit 1; }

# The embedded sandbox over h2c and the token endpoint, on free ports with the rate limits lifted.
work=$(mktemp -d)
gw=""
trap 'if [ -n "$gw" ]; then kill "$gw" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
sed -e 's|^proxy = .*|proxy = "127.0.0.1:0"|' -e 's|^admin = .*|admin = "127.0.0.1:0"|' \
  -e "s|^path = \"var/audit/audit.jsonl\"|path = \"$work/audit/audit.jsonl\"|" \
  -e 's|^rate_per_sec = .*|rate_per_sec = 1000000|' -e 's|^burst = .*|burst = 1000000|' \
  config/local.toml >"$work/gateway.toml"
"$gen" serve --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
gw=$!
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's/.*listening proxy 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/gateway.log" | head -1)
  [ -n "$port" ] && break
  kill -0 "$gw" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "the instrumented gateway did not start" >&2; exit 1; }
base="http://127.0.0.1:$port"
# Callers with the API key and with a JWT from the gateway's own token endpoint (200 of them).
secret=$(tr -d '\n' <config/local/demo-client-secret)
token_request="{\"client_id\":\"demo\",\"client_secret\":\"$secret\",\"grant_type\":\"client_credentials\",\"audience\":\"https://api-integration.ratepay.com/transaction/management\"}"
for _ in $(seq 200); do
  curl -s -H 'Content-Type: application/json' -d "$token_request" "$base/oauth/token" >"$work/token.json"
done
jwt=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' "$work/token.json")
[ -n "$jwt" ] || { echo "the token endpoint gave no token: $(cat "$work/token.json")" >&2; exit 1; }
# HTTP/2 callers: h2load (Debian: nghttp2-client), 20,000 GETs a pass on 4 connections with 8
# streams each, uncached and cache hits with the API key, uncached with the token.
if command -v h2load >/dev/null; then
  n=${PGO_H2_REQUESTS:-20000}
  for path in /transaction/status/v2/transactions/pgo-training /pps/api/v1/session-record/pgo-training; do
    h2load -n "$n" -c 4 -m 8 -H 'Authorization: Bearer demo-key' "$base$path" >/dev/null
  done
  h2load -n "$n" -c 4 -m 8 -H "Authorization: Bearer $jwt" \
    "$base/transaction/management/v2/transactions/pgo-training" >/dev/null
else
  echo "h2load not found (Debian: nghttp2-client): HTTP/2 callers are left out of the profile" >&2
fi
kill -TERM "$gw"
wait "$gw" || true
gw=""

echo "== 3/3 build with the profile" >&2
"$profdata" merge -o "$out/merged.profdata" "$profiles"
RUSTFLAGS="-Cprofile-use=$PWD/$out/merged.profdata" \
  cargo build --release --locked --target-dir "$out/use"
cp "$out/use/release/ratepay-gateway" "$out/ratepay-gateway"
echo "profile-guided build: $out/ratepay-gateway" >&2
