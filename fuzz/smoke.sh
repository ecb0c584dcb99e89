#!/usr/bin/env bash
# Smoke run of every cargo-fuzz target: builds the fuzz crate, then runs each target for
# FUZZ_SMOKE_RUNS executions (default 2000) from its seed corpus in fuzz/seeds/<target>.
# Exits non-zero on the first crash (the input is left in fuzz/artifacts/<target>/).
#
# Stable toolchain, no sanitizer: `cargo fuzz` (cargo install cargo-fuzz --locked) with
# `--sanitizer none` (coverage-guided libFuzzer; ASan needs nightly or RUSTC_BOOTSTRAP=1).
# Set FUZZ_CPU to pin the runs to one core (taskset), e.g. FUZZ_CPU=1. FUZZ_REGRESSIONS=1 also
# replays fuzz/regressions/<target>/ (inputs that crashed the code before a fix) first.
set -euo pipefail
cd "$(dirname "$0")"
runs="${FUZZ_SMOKE_RUNS:-2000}"
pin=()
if [ -n "${FUZZ_CPU:-}" ]; then pin=(taskset -c "$FUZZ_CPU"); fi

start=$(date +%s)
"${pin[@]}" cargo fuzz build --sanitizer none
echo "fuzz smoke: build took $(( $(date +%s) - start )) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    t0=$(date +%s)
    if [ -n "${FUZZ_REGRESSIONS:-}" ] && [ -d "regressions/$target" ]; then
        if ! "${pin[@]}" cargo fuzz run --sanitizer none "$target" regressions/"$target"/* -- \
            -runs=1 >"$scratch/$target.regressions.log" 2>&1; then
            tail -n 40 "$scratch/$target.regressions.log"
            echo "fuzz smoke: $target FAILED on a regression input (fuzz/regressions/$target/)"
            exit 1
        fi
    fi
    mkdir -p "$scratch/$target"
    # The scratch dir comes first: libFuzzer writes new inputs there, never into the seeds.
    if ! "${pin[@]}" cargo fuzz run --sanitizer none "$target" "$scratch/$target" "seeds/$target" -- \
        -runs="$runs" -seed=1 -max_len=4096 -timeout=10 >"$scratch/$target.log" 2>&1; then
        tail -n 40 "$scratch/$target.log"
        echo "fuzz smoke: $target FAILED (see fuzz/artifacts/$target/)"
        exit 1
    fi
    echo "fuzz smoke: $target ok, $runs runs in $(( $(date +%s) - t0 )) s"
done
echo "fuzz smoke: all targets ok in $(( $(date +%s) - start )) s"
