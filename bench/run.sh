#!/usr/bin/env bash
# Detection speed for 10, 100 and 500 rules over two generated auth logs, reported as
# lines/s and as a ratio to `grep -c` over the same file in the same run (machines differ;
# the ratios are what to compare). Each rule count is measured twice: the multi-pattern pass
# alone (the floor: no rule set evaluates faster on this machine) and the whole detector.
# Usage: bench/run.sh [LINES]
#
#   attack-heavy  the generated sshd/PAM/sudo/cron log of a host under brute force
#                 (37 % of lines match a rule, ~0.77 counted matches per line)
#   benign-heavy  the same log with nine in ten matching lines dropped (a quiet host)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Floating-point arithmetic (awk is on every machine; bc is not).
calc() { awk "BEGIN { printf \"%.10g\\n\", $1 }"; }

# DETECT_BENCH: an already built detect_bench (the test suite runs this script on its debug
# build to check that it works; such figures mean nothing).
bin=${DETECT_BENCH:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --example detect_bench
  bin=target/release/examples/detect_bench
fi
"$bin" gen-log "$lines" "$work/attack-heavy.log"
awk '/Failed|Invalid user|incorrect|Accepted/ { if (NR % 10 == 0) print; next } { print }' \
  "$work/attack-heavy.log" >"$work/benign-heavy.log"
for total in 10 100 500; do
  "$bin" gen-rules rules "$work/rules-$total" "$total" >/dev/null
done

# Two rows per rule count: `pass`, the floor of the design (reading, timestamps and the one
# multi-pattern pass, no captures, keys or windows), and `detect`, the whole detector.
printf '%-13s %-6s %-7s %12s %9s %17s\n' log rules stage lines/s seconds "ratio to grep -c"
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
    t=$(calc "$end - $start")
    if [ -z "$best_grep" ] || [ "$(calc "$t < $best_grep")" = 1 ]; then best_grep=$t; fi
  done
  grep_rate=$(calc "$count / $best_grep")
  printf '%-13s %-6s %-7s %12.0f %9.3f %17s\n' "$log" - "grep -c" "$grep_rate" "$best_grep" 1.000
  first_rate=
  for total in 10 100 500; do
    for stage in pass detect; do
      mode=$([ "$stage" = pass ] && echo pass || echo run)
      out=$("$bin" "$mode" "$work/rules-$total" "$file")
      rate=$(echo "$out" | sed -E 's/.*"lines_per_second": ([0-9.]+).*/\1/')
      secs=$(echo "$out" | sed -E 's/.*"seconds": ([0-9.]+).*/\1/')
      printf '%-13s %-6s %-7s %12.0f %9.3f %17.3f\n' "$log" "$total" "$stage" "$rate" "$secs" \
        "$(calc "$rate / $grep_rate")"
      echo "  $out" >&2
    done
    [ -z "$first_rate" ] && first_rate=$rate
  done
  echo "$log: detector slowdown from 10 to 500 rules: $(printf '%.2f' "$(calc "$first_rate / $rate")")x"
done
