# Shell helpers for the scripts that run the gateway binary by hand (benches/instructions.sh,
# benches/h2.sh, scripts/pgo-build.sh); sourced from the repository root.

# Writes config/local.toml to $1/gateway.toml on free ports, its audit log in $1 and its rate
# limits (200/s per caller, 500/s toward the payment API) lifted far above what any of these
# scripts sends, so that every request is served rather than some refused with 429.
local_gateway_toml() {
  sed -e 's|^proxy = .*|proxy = "127.0.0.1:0"|' -e 's|^admin = .*|admin = "127.0.0.1:0"|' \
    -e "s|^path = \"var/audit/audit.jsonl\"|path = \"$1/audit/audit.jsonl\"|" \
    -e 's|^rate_per_sec = .*|rate_per_sec = 1000000|' -e 's|^burst = .*|burst = 1000000|' \
    config/local.toml >"$1/gateway.toml"
}

# Prints the proxy port that the gateway $2, logging to $1, announced; fails (its log on stderr)
# if it exits first or has not announced one after $3 tenths of a second (300).
proxy_port() {
  local port=""
  for _ in $(seq 1 "${3:-300}"); do
    port=$(sed -n 's/.*listening proxy 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$1" | head -1)
    [ -n "$port" ] && { echo "$port"; return 0; }
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  cat "$1" >&2
  echo "the gateway (pid $2) did not announce its proxy port" >&2
  return 1
}

# Appends a TLS listener to the configuration $2: a throwaway self-signed P-256 certificate for
# 127.0.0.1 (openssl), its files written into the directory $1.
add_tls_listener() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
  printf '\n[listen.tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$1/cert.pem" "$1/key.pem" >>"$2"
}

# Builds the load benchmark (its output in $1) and prints its binary's path.
load_bench_binary() {
  cargo bench --locked --bench load --no-run >"$1" 2>&1 ||
    { tail -20 "$1" >&2; echo "the load benchmark did not build" >&2; return 1; }
  local bin
  bin=$(sed -n 's/.*Executable .*(\(.*\)).*/\1/p' "$1" | tail -1)
  [ -x "$bin" ] || { echo "no load benchmark binary in $1" >&2; return 1; }
  echo "$bin"
}
