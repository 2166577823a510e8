#!/bin/sh
# Builds the RPM (Amazon Linux, RHEL, Fedora): the same files as the .deb, from the one
# asset list in Cargo.toml ([package.metadata.deb] assets), files under /etc marked
# %config(noreplace); scriptlets in packaging/rpm/ (preset on first install, disable on
# erase, start nothing).
#   scripts/build-rpm.sh [--target aarch64] [--output DIR] [--no-build]
#   scripts/build-rpm.sh --debug-build [--target aarch64] [--output DIR]
#                       package target[/TRIPLE]/debug/bootstage as it is (for tests)
# Default output: target/generate-rpm (target/TRIPLE/generate-rpm with --target).
# Needs cargo-generate-rpm (scripts/install-test-deps.sh installs it).
set -eu
cd "$(dirname "$0")/.."
. scripts/cross.sh
# One package build at a time (the tests build both at once): each rebuilds target/assets,
# which the other is reading. The lock goes with this shell.
mkdir -p target
exec 9>target/.packaging.lock
flock 9
output=
build=yes
profile=
while [ $# -gt 0 ]; do
  case $1 in
    --target) set_target "$2"; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --no-build) build=no; shift ;;
    # A test package: the unstripped debug binary is large, and zstd takes minutes on it.
    --debug-build) build=no; profile="--profile dev --payload-compress gzip"; shift ;;
    *) echo "usage: $0 [--target x86_64|aarch64] [--output DIR] [--no-build]" >&2; exit 64 ;;
  esac
done
[ "$build" = no ] || cargo build --release --package bootstage $cargo_target
scripts/build-assets.sh
assets=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
meta = json.load(sys.stdin)
pkg = next(p for p in meta["packages"] if p["name"] == "bootstage")
out = []
for source, dest, mode in pkg["metadata"]["deb"]["assets"]:
    dest = "/" + dest
    extra = ""
    if dest.startswith("/etc/"):
        extra = ", config = \"noreplace\""
    elif dest.startswith("/usr/share/doc/"):
        extra = ", doc = true"
    out.append("{ source = %s, dest = %s, mode = %s%s }" % (json.dumps(source), json.dumps(dest), json.dumps(mode), extra))
print("assets = [" + ", ".join(out) + "]")
')
set -- --set-metadata "$assets" $cargo_target $profile
[ -z "$output" ] || set -- "$@" --output "$output"
[ -z "$output" ] || mkdir -p "$output"
cargo generate-rpm "$@"
