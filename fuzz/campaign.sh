#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), JOBS at a time (default: the number of
# cores), and prints each target's runs, runs per second and outcome. Needs cargo-fuzz and
# the nightly toolchain. Usage: fuzz/campaign.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ops global oom heaps radix)
jobs=${JOBS:-$(nproc)}
logs=$(mktemp -d)
cargo +nightly fuzz build >/dev/null || exit 1
running=0
for t in "${targets[@]}"; do
    (cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" >"$logs/$t.log" 2>&1; echo "rc=$?" >>"$logs/$t.log") &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait
status=0
printf '%-8s %12s %8s %10s  %s\n' target runs seconds "runs/s" outcome
for t in "${targets[@]}"; do
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$logs/$t.log" | tail -1)
    runs=$(awk '{print $2}' <<<"$done_line"); secs=$(awk '{print $5}' <<<"$done_line")
    if grep -q '^rc=0' "$logs/$t.log" && [ -n "$done_line" ]; then outcome="no finding"; else outcome="FAILED: see $logs/$t.log"; status=1; fi
    printf '%-8s %12s %8s %10s  %s\n' "$t" "${runs:-?}" "${secs:-?}" "$(( ${runs:-0} / (${secs:-1} > 0 ? ${secs:-1} : 1) ))" "$outcome"
done
exit $status
