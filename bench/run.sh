#!/usr/bin/env bash
# Detection speed for 10, 100 and 500 rules over two generated auth logs, reported as
# lines/s and as a ratio to `grep -c` over the same file in the same run (machines differ;
# the ratios are what to compare). Usage: bench/run.sh [LINES]
#
#   attack-heavy  the generated sshd/PAM/sudo/cron log of a host under brute force
#                 (37 % of lines match a rule, ~0.77 counted matches per line)
#   benign-heavy  the same log with nine in ten matching lines dropped (a quiet host)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --example detect_bench
bin=target/release/examples/detect_bench
"$bin" gen-log "$lines" "$work/attack-heavy.log"
awk '/Failed|Invalid user|incorrect|Accepted/ { if (NR % 10 == 0) print; next } { print }' \
  "$work/attack-heavy.log" >"$work/benign-heavy.log"
for total in 10 100 500; do
  "$bin" gen-rules rules "$work/rules-$total" "$total" >/dev/null
done

printf '%-13s %-8s %12s %9s %17s\n' log rules lines/s seconds "ratio to grep -c"
for log in attack-heavy benign-heavy; do
  file="$work/$log.log"
  count=$(wc -l <"$file")
  # Baseline: grep counting failed SSH logins in the same file (best of 3, page cache warm).
  best_grep=
  for _ in 1 2 3; do
    start=$(date +%s.%N)
    # Into a file: GNU grep stops at the first match when its output is /dev/null.
    grep -c 'Failed password' "$file" >"$work/count"
    end=$(date +%s.%N)
    t=$(echo "$end - $start" | bc -l)
    if [ -z "$best_grep" ] || [ "$(echo "$t < $best_grep" | bc -l)" = 1 ]; then best_grep=$t; fi
  done
  grep_rate=$(echo "$count / $best_grep" | bc -l)
  printf '%-13s %-8s %12.0f %9.3f %17s\n' "$log" "grep -c" "$grep_rate" "$best_grep" 1.000
  first_rate=
  for total in 10 100 500; do
    out=$("$bin" run "$work/rules-$total" "$file")
    rate=$(echo "$out" | sed -E 's/.*"lines_per_second": ([0-9.]+).*/\1/')
    secs=$(echo "$out" | sed -E 's/.*"seconds": ([0-9.]+).*/\1/')
    [ -z "$first_rate" ] && first_rate=$rate
    printf '%-13s %-8s %12.0f %9.3f %17.3f\n' "$log" "$total" "$rate" "$secs" \
      "$(echo "$rate / $grep_rate" | bc -l)"
    echo "  $out" >&2
  done
  echo "$log: slowdown from 10 to 500 rules: $(printf '%.2f' "$(echo "$first_rate / $rate" | bc -l)")x"
done
