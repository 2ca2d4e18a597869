#!/usr/bin/env bash
# Builds the Debian package of logwarden with dpkg-deb: the binary, the systemd unit,
# /etc/logwarden/{logwarden.yaml,rules/} as conffiles, the man page and shell completions
# (generated from the binary itself), and maintainer scripts that create the admin token on
# first install and enable the service.
#
#   packaging/deb/build.sh [OUT_DIR]          # builds target/release/logwarden first
#   LOGWARDEN_BIN=path/to/logwarden packaging/deb/build.sh OUT_DIR   # packages that binary
#
# Prints the path of the .deb it wrote.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/target/debian}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

bin="${LOGWARDEN_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --manifest-path "$repo/Cargo.toml" >&2
  bin="$repo/target/release/logwarden"
fi
version="$(grep -m1 '^version' "$repo/Cargo.toml" | cut -d'"' -f2)"
arch="$(dpkg --print-architecture)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/logwarden"
install -D -m 0644 "$repo/systemd/logwarden.service" "$stage/lib/systemd/system/logwarden.service"
install -D -m 0644 "$repo/config/production.yaml" "$stage/etc/logwarden/logwarden.yaml"
for rules in "$repo"/rules/*.yaml; do
  install -D -m 0644 "$rules" "$stage/etc/logwarden/rules/$(basename "$rules")"
done
install -d -m 0700 "$stage/etc/logwarden/tokens"
install -D -m 0644 "$repo/LICENSE" "$stage/usr/share/doc/logwarden/copyright"
install -d "$stage/usr/share/man/man1"
"$bin" man | gzip -9n > "$stage/usr/share/man/man1/logwarden.1.gz"
install -d "$stage/usr/share/bash-completion/completions" \
  "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$bin" completions bash > "$stage/usr/share/bash-completion/completions/logwarden"
"$bin" completions zsh > "$stage/usr/share/zsh/vendor-completions/_logwarden"
"$bin" completions fish > "$stage/usr/share/fish/vendor_completions.d/logwarden.fish"

install -d "$stage/DEBIAN"
(cd "$stage" && find etc/logwarden -type f | sed 's|^|/|' | sort) > "$stage/DEBIAN/conffiles"
size="$(du -sk "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: logwarden
Version: $version
Architecture: $arch
Maintainer: logwarden maintainers <logwarden@localhost>
Installed-Size: $size
Depends: libc6
Section: admin
Priority: optional
Description: turns host logs into classified, escalated, evidenced incidents
 Tails log files, syslog and the journal, applies YAML rules (thresholds, spikes,
 absences, sequences, distinct counts), keeps deduplicated incidents with evidence,
 escalates them to roles through webhooks and keeps a hash-chained audit log.
CONTROL
cp "$repo/packaging/deb/postinst" "$repo/packaging/deb/prerm" "$repo/packaging/deb/postrm" "$stage/DEBIAN/"
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

deb="$out/logwarden_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >&2
echo "$deb"
