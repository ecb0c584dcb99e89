#!/usr/bin/env bash
# Long fuzzing run: each target (or those named as arguments) in turn for FUZZ_SECONDS
# (default 600), one core (FUZZ_CPU, default 1), keeping going after a crash (libFuzzer fork
# mode with -ignore_crashes=1) so one known defect does not end the run. The working corpus
# grows in fuzz/corpus/<target> (not committed), crash inputs land in fuzz/artifacts/<target>/,
# each target's output in fuzz/logs/<target>.log, and a summary line per target in
# fuzz/logs/summary.txt.
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-600}"
cpu="${FUZZ_CPU:-1}"
mkdir -p logs
taskset -c "$cpu" cargo fuzz build --sanitizer none
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then mapfile -t targets < <(cargo fuzz list); fi
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="logs/$target.log"
    t0=$(date +%s)
    taskset -c "$cpu" cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -max_total_time="$secs" \
        -max_len=4096 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1 || true
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    crashes=$(ls "artifacts/$target" 2>/dev/null | grep -c '^crash-' || true)
    echo "$target: $(( $(date +%s) - t0 )) s; last status: $last; corpus files: $(ls "corpus/$target" | wc -l); crash files: $crashes" | tee -a logs/summary.txt
done
