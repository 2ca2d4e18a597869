#!/usr/bin/env bash
# Renders the mixin into monitoring/rendered/ (needs jsonnet: apt-get install jsonnet).
# --check: render into a temporary directory and fail when rendered/ is not current.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/rendered"
if [ "${1:-}" = "--check" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out/dashboards"
jsonnet -J "$here" -S -m "$out" "$here/render.jsonnet" >/dev/null
if [ "${1:-}" = "--check" ]; then
  if ! diff -ru "$here/rendered" "$out"; then
    echo "monitoring/rendered is not current: run monitoring/render.sh and commit the result" >&2
    exit 1
  fi
fi
