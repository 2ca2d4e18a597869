#!/usr/bin/env bash
# Detection speed for 10, 100 and 500 rules over two generated auth logs, reported as
# lines/s, peak RSS, instructions per line (where `perf stat` can count them) and as ratios
# to `grep -c` over the same file and to the previous design, both in the same run
# (machines differ; the ratios are what to compare). Each rule count is measured for
# finding candidates alone (`pass`) and the whole detector (`detect`), each with the
# previous design (`prev`: combined-set front end, `regex` crate captures) and the
# detector's (`cur`: literal gate followed directly by captures on PCRE2's JIT). Then
# `logwarden replay` with the shipped rules over the attack-heavy log: lines/s on 1 thread
# and on every core, both designs, peak RSS, and the ratio to mtail running the same
# brute-force rule (bench/ssh-bruteforce.mtail) when mtail is installed.
# Usage: bench/run.sh [LINES]   (environment: REPLAY_RUNS, LOGWARDEN_BASELINE_BIN, below)
#
#   attack-heavy  the generated sshd/PAM/sudo/cron log of a host under brute force
#                 (37 % of lines match a rule, ~0.77 counted matches per line)
#   benign-heavy  the same log with nine in ten matching lines dropped (a quiet host)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
# $work (removed on exit) and calc, shared with the other benches.
source bench/lib.sh

# DETECT_BENCH: an already built detect_bench (the test suite runs this script on its debug
# build to check that it works; such figures mean nothing).
# LOGWARDEN_BIN: likewise, an already built logwarden.
bin=${DETECT_BENCH:-}
logwarden=${LOGWARDEN_BIN:-}
if [ -z "$bin" ] || [ -z "$logwarden" ]; then
  cargo build --release --quiet --example detect_bench --bin logwarden
  bin=${bin:-target/release/examples/detect_bench}
  logwarden=${logwarden:-target/release/logwarden}
fi
cores=$(nproc)
"$bin" gen-log "$lines" "$work/attack-heavy.log"
awk '/Failed|Invalid user|incorrect|Accepted/ { if (NR % 10 == 0) print; next } { print }' \
  "$work/attack-heavy.log" >"$work/benign-heavy.log"
for total in 10 100 500; do
  "$bin" gen-rules rules "$work/rules-$total" "$total" >/dev/null
done

# Does `perf stat` count instructions here (not in most VMs)?
perf_ok=
if command -v perf >/dev/null &&
  perf stat -x, -e instructions:u true 2>&1 | grep -qE '^[0-9]+,'; then
  perf_ok=1
fi

# Runs detect_bench with its arguments; sets $out (its JSON line), $rss (peak resident set,
# MiB, or -) and $instr (instructions, or empty).
measure() {
  local cmd=("$bin" "$@")
  [ -x /usr/bin/time ] && cmd=(/usr/bin/time -f %M -o "$work/rss" "${cmd[@]}")
  [ -n "$perf_ok" ] && cmd=(perf stat -x, -o "$work/perf" -e instructions:u -- "${cmd[@]}")
  out=$("${cmd[@]}")
  rss=-
  [ -s "$work/rss" ] && rss=$(calc "$(tail -1 "$work/rss") / 1024")
  instr=
  [ -n "$perf_ok" ] && instr=$(grep instructions "$work/perf" | cut -d, -f1)
  rm -f "$work/rss" "$work/perf"
}

# Four rows per rule count: two stages, each in two designs. `pass` is finding the
# candidate patterns alone (reading, timestamps and the front end, no captures, keys or
# windows; with the gate a candidate is not yet a match), `detect` the whole detector.
# `prev` is the previous design, `cur` the detector's (same hits, see tests/front_end.rs);
# "vs prev" is the row over `prev` in the same run.
printf '%-13s %-6s %-7s %-5s %12s %9s %9s %11s %10s %7s\n' \
  log rules stage front lines/s seconds peak_MiB instr/line "vs grep -c" "vs prev"
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
  [ "$log" = attack-heavy ] && grep_attack=$grep_rate
  printf '%-13s %-6s %-7s %-5s %12.0f %9.3f %9s %11s %10s %7s\n' "$log" - "grep -c" - \
    "$grep_rate" "$best_grep" - - 1.000 -
  first_rate=
  for total in 10 100 500; do
    for stage in pass detect; do
      mode=$([ "$stage" = pass ] && echo pass || echo run)
      for front in prev cur; do
        design=$([ "$front" = prev ] && echo previous || echo gate+pcre2)
        measure "$mode" "$work/rules-$total" "$file" "$design"
        rate=$(echo "$out" | sed -E 's/.*"lines_per_second": ([0-9.]+).*/\1/')
        secs=$(echo "$out" | sed -E 's/.*"seconds": ([0-9.]+).*/\1/')
        per_line=-
        [ -n "$instr" ] && per_line=$(printf '%.0f' "$(calc "$instr / $count")")
        [ "$front" = prev ] && set_rate=$rate
        [ "$stage/$front" = detect/cur ] && detect_rate=$rate
        printf '%-13s %-6s %-7s %-5s %12.0f %9.3f %9s %11s %10.3f %7.2f\n' "$log" "$total" \
          "$stage" "$front" "$rate" "$secs" "$(printf '%.0f' "$rss" 2>/dev/null || echo -)" \
          "$per_line" "$(calc "$rate / $grep_rate")" "$(calc "$rate / $set_rate")"
        echo "  $out" >&2
      done
    done
    [ -z "$first_rate" ] && first_rate=$detect_rate
  done
  echo "$log: detector slowdown from 10 to 500 rules: $(printf '%.2f' "$(calc "$first_rate / $detect_rate")")x"
done

# logwarden replay, the shipped rules, the attack-heavy log: 1 thread and every core, in
# both designs. "vs prev" is the row over the previous design with as many threads, "vs 1"
# over the same design on one thread; "vs mtail" is over mtail running the ssh-bruteforce
# rule's event-time window program (bench/ssh-bruteforce.mtail) on the same file, when
# mtail is installed (`apt-get install mtail`; it uses every core).
file="$work/attack-heavy.log"
count=$(wc -l <"$file")
mtail_rate=
if command -v mtail >/dev/null; then
  mkdir -p "$work/mtail"
  cp bench/ssh-bruteforce.mtail "$work/mtail/"
  start=$(date +%s.%N)
  cmd=(mtail --one_shot --one_shot_format=prometheus --progs "$work/mtail" --logs "$file")
  [ -x /usr/bin/time ] && cmd=(/usr/bin/time -f %M -o "$work/rss" "${cmd[@]}")
  "${cmd[@]}" >"$work/mtail.out" 2>"$work/mtail.err"
  end=$(date +%s.%N)
  mtail_rate=$(calc "$count / ($end - $start)")
  rss=-
  [ -s "$work/rss" ] && rss=$(printf '%.0f' "$(calc "$(tail -1 "$work/rss") / 1024")")
  rm -f "$work/rss"
  read_lines=$(grep -E '^lines_read' "$work/mtail.out" | awk '{ print $2 }')
  echo "mtail (ssh-bruteforce window program, $cores cores): $(printf '%.0f' "$mtail_rate") lines/s, ${read_lines:-?} lines read, peak ${rss} MiB"
else
  echo "mtail not installed: no ratio to it (apt-get install mtail)"
fi
printf '\n%-13s %-7s %-8s %12s %9s %9s %10s %7s %7s %8s %7s\n' \
  log threads design lines/s seconds peak_MiB "vs grep -c" "vs prev" "vs 1" "vs mtail" cpu_s
# Each row is the best (shortest wall time) of $REPLAY_RUNS runs (default 3), in rounds
# that alternate the rows, so a busy machine slows every row alike; cpu_s is that run's
# user + system CPU seconds (what the threads cost, whatever the wall time).
# LOGWARDEN_BASELINE_BIN: an older logwarden measured the same way, in the same run
# (rows `baseline`, its detector's design), to compare builds.
runs=${REPLAY_RUNS:-3}
designs=(previous current)
[ -n "${LOGWARDEN_BASELINE_BIN:-}" ] && designs+=(baseline)
declare -A rates best cpus peaks
for ((round = 0; round < runs; round++)); do
  for design in "${designs[@]}"; do
    for threads in 1 "$cores"; do
      bin=$logwarden
      flag=$design
      [ "$design" = baseline ] && bin=$LOGWARDEN_BASELINE_BIN && flag=current
      cmd=("$bin" replay --json --config "$work/no-config.yaml" --rules rules
        --design "$flag" --threads "$threads" "$file")
      [ -x /usr/bin/time ] && cmd=(/usr/bin/time -f '%M %U %S' -o "$work/rss" "${cmd[@]}")
      out=$("${cmd[@]}" | tr -d '\n')
      rate=$(echo "$out" | sed -E 's/.*"lines_per_second":([0-9.]+).*/\1/')
      key=$design/$threads
      if [ -z "${rates[$key]:-}" ] || [ "$(calc "($rate > ${rates[$key]})")" = 1 ]; then
        rates[$key]=$rate
        best[$key]=$(echo "$out" | sed -E 's/.*"seconds":([0-9.]+).*/\1/')
        peaks[$key]=-
        cpus[$key]=-
        if [ -s "$work/rss" ]; then
          read -r kib user sys <"$work/rss"
          peaks[$key]=$(printf '%.0f' "$(calc "$kib / 1024")")
          cpus[$key]=$(printf '%.2f' "$(calc "$user + $sys")")
        fi
      fi
      rm -f "$work/rss"
    done
  done
done
for design in "${designs[@]}"; do
  for threads in 1 "$cores"; do
    key=$design/$threads
    rate=${rates[$key]}
    prev=${rates[previous/$threads]}
    one=${rates[$design/1]}
    vs_mtail=-
    [ -n "$mtail_rate" ] && vs_mtail=$(printf '%.2f' "$(calc "$rate / $mtail_rate")")
    printf '%-13s %-7s %-8s %12.0f %9.3f %9s %10.3f %7.2f %7.2f %8s %7s\n' replay "$threads" "$design" \
      "$rate" "${best[$key]}" "${peaks[$key]}" "$(calc "$rate / $grep_attack")" "$(calc "$rate / $prev")" \
      "$(calc "$rate / $one")" "$vs_mtail" "${cpus[$key]}"
  done
done
echo "machine load (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
