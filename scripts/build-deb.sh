#!/bin/sh
# Builds the Debian package: the binary, the units, man pages and shell completions
# generated from the CLI definition (crates/xtask), from the asset list in Cargo.toml
# (which the RPM shares: scripts/build-rpm.sh).
#   scripts/build-deb.sh [--target x86_64|aarch64] [--output DIR]
#                       release build, .deb into DIR (default target/debian, or
#                       target/TRIPLE/debian with --target)
#   scripts/build-deb.sh --debug-build [--output DIR]
#                       package target/debug/bootstage as it is (the boot test packages
#                       the binary it tests)
# Needs cargo-deb: scripts/install-test-deps.sh installs it.
set -eu
cd "$(dirname "$0")/.."
. scripts/cross.sh
# One package build at a time (the tests build both at once): each rebuilds target/assets,
# which the other is reading. The lock goes with this shell.
mkdir -p target
exec 9>target/.packaging.lock
flock 9
output=
debug=no
while [ $# -gt 0 ]; do
  case $1 in
    --output) output=$2; shift 2 ;;
    --debug-build) debug=yes; shift ;;
    --target) set_target "$2"; shift 2 ;;
    *) echo "usage: $0 [--debug-build] [--target x86_64|aarch64] [--output DIR]" >&2; exit 64 ;;
  esac
done
scripts/build-assets.sh
set -- --package bootstage $cargo_target
if [ -n "$output" ]; then
  mkdir -p "$output"
  set -- "$@" --output "$output"
fi
if [ "$debug" = yes ]; then
  # cargo-deb maps the target/release/ asset paths to target/debug/ and warns that dev
  # builds are not for release, which is true: this package is for tests.
  cargo deb --quiet "$@" --no-build --profile dev --fast
else
  cargo build --release --package bootstage $cargo_target
  # The release profile strips already: the .deb and the .rpm carry the same bytes.
  cargo deb "$@" --no-build --no-strip
fi
