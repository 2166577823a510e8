#!/bin/sh
# The four packages an image build needs, and their checksums, in one command:
#   scripts/build-packages.sh [--output DIR]      (default target/packages)
# bootstage_VERSION-1_amd64.deb, bootstage_VERSION-1_arm64.deb,
# bootstage-VERSION-1.x86_64.rpm, bootstage-VERSION-1.aarch64.rpm, SHA256SUMS.
# arm64 is cross-built (scripts/cross.sh); scripts/install-test-deps.sh installs the tools.
set -eu
cd "$(dirname "$0")/.."
output=target/packages
while [ $# -gt 0 ]; do
  case $1 in
    --output) output=$2; shift 2 ;;
    *) echo "usage: $0 [--output DIR]" >&2; exit 64 ;;
  esac
done
mkdir -p "$output"
rm -f "$output"/*.deb "$output"/*.rpm "$output"/SHA256SUMS
for target in x86_64 aarch64; do
  scripts/build-deb.sh --target "$target" --output "$output"
  scripts/build-rpm.sh --target "$target" --output "$output" --no-build
done
(cd "$output" && sha256sum -- *.deb *.rpm > SHA256SUMS)
ls -l "$output"
