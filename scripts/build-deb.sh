#!/bin/sh
# Builds the Debian package: the binary, the units, man pages and shell completions
# generated from the CLI definition (crates/xtask).
#   scripts/build-deb.sh [--output DIR]                release build, .deb into DIR
#                                                      (default target/debian)
#   scripts/build-deb.sh --debug-build [--output DIR]  package target/debug/bootstage as
#                                                      it is (the boot test packages the
#                                                      binary it tests)
# Needs cargo-deb: scripts/install-test-deps.sh installs it.
set -eu
cd "$(dirname "$0")/.."
output=target/debian
debug=no
while [ $# -gt 0 ]; do
  case $1 in
    --output) output=$2; shift 2 ;;
    --debug-build) debug=yes; shift ;;
    *) echo "usage: $0 [--debug-build] [--output DIR]" >&2; exit 64 ;;
  esac
done
assets=target/assets
rm -rf "$assets"
cargo run --quiet --package xtask -- assets "$assets"
gzip -9n "$assets"/man/*.1
mkdir -p "$output"
if [ "$debug" = yes ]; then
  # cargo-deb maps the target/release/ asset paths to target/debug/ and warns that dev
  # builds are not for release, which is true: this package is for tests.
  cargo deb --quiet --package bootstage --no-build --profile dev --output "$output"
else
  cargo deb --package bootstage --output "$output"
fi
