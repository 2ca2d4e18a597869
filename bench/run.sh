#!/usr/bin/env bash
# Detection speed over a generated 1 M-line auth log, for 10, 100 and 500 rules, reported
# as lines/s and as a ratio to `grep -c` over the same file in the same run (machines
# differ; the ratios are what to compare). Usage: bench/run.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --example detect_bench
bin=target/release/examples/detect_bench
"$bin" gen-log "$lines" "$work/auth.log"

# Baseline: grep counting failed SSH logins in the same file (best of 3, page cache warm).
best_grep=
for _ in 1 2 3; do
  start=$(date +%s.%N)
  # Into a file: GNU grep stops at the first match when its output is /dev/null.
  grep -c 'Failed password' "$work/auth.log" >"$work/count"
  end=$(date +%s.%N)
  t=$(echo "$end - $start" | bc -l)
  if [ -z "$best_grep" ] || [ "$(echo "$t < $best_grep" | bc -l)" = 1 ]; then best_grep=$t; fi
done
grep_rate=$(echo "$lines / $best_grep" | bc -l)
printf '%-10s %14s %12s %16s\n' rules lines/s seconds "ratio to grep -c"
printf '%-10s %14.0f %12.3f %16s\n' "grep -c" "$grep_rate" "$best_grep" 1.000

first_rate=
for total in 10 100 500; do
  "$bin" gen-rules rules "$work/rules-$total" "$total" >/dev/null
  out=$("$bin" run "$work/rules-$total" "$work/auth.log")
  rate=$(echo "$out" | sed -E 's/.*"lines_per_second": ([0-9.]+).*/\1/')
  secs=$(echo "$out" | sed -E 's/.*"seconds": ([0-9.]+).*/\1/')
  [ -z "$first_rate" ] && first_rate=$rate
  printf '%-10s %14.0f %12.3f %16.3f\n' "$total" "$rate" "$secs" "$(echo "$rate / $grep_rate" | bc -l)"
  echo "  $out" >&2
done
echo "slowdown from 10 to 500 rules: $(printf '%.2f' "$(echo "$first_rate / $rate" | bc -l)")x"
