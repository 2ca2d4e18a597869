# Shared by the bench scripts (sourced): a work directory removed on exit together with
# the daemon started into $pid, arithmetic, and a process's CPU time.

work=$(mktemp -d)
pid=
# Scripts that start more background processes list them here to have them stopped too.
also_stop=()
cleanup() {
  for p in "${also_stop[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Floating-point arithmetic and comparisons (awk is on every machine; bc is not).
calc() { awk "BEGIN { printf \"%.10g\\n\", ($1) }"; }

# CPU seconds (user + system) process $1 has used.
cpu_seconds() {
  awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / t }' "/proc/$1/stat"
}
