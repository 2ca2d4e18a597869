#!/usr/bin/env bash
# Memory per key: a flood of one-time addresses (failed SSH logins, each from a new
# address) through the shipped rules, and through each shipped SSH rule alone, as the
# daemon's detector runs them. Prints the resident-set growth per live key and the
# projection for every shipped rule at the default key bound.
# Usage: bench/keys.sh [KEYS]
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --example detect_bench
bin=target/release/examples/detect_bench
echo "all shipped rules:"
"$bin" keys rules "$keys"
echo "default max_keys: $(grep -o 'DEFAULT_MAX_KEYS: usize = [0-9_]*' src/rules.rs | grep -o '[0-9_]*$')"
echo "rules shipped: $(grep -c '^  - id:' rules/*.yaml | awk -F: '{ n += $2 } END { print n }')"
