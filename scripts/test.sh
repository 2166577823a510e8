#!/usr/bin/env bash
# The full test suite, after installing what it needs. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
release_log=$(mktemp)
cross_log=$(mktemp)
background=()
# `in_background CMD…`: CMD in its own session (setsid), so that leaving early (a clippy
# finding) stops its compilers too, and at the lowest priority. Where the kernel groups
# processes by session to share the CPU (autogroup scheduling, on in most distributions),
# a new session competes with ours as an equal and its nice value counts only inside it:
# its autogroup is set to 19 too, or the background would take a third of the cores each.
# Only ever called with `&`: it replaces the subshell `&` made, so that `$!` is the session.
in_background() {
  exec setsid sh -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"' sh "$@"
}
stop_background() {
  for pid in "${background[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
  rm -f "$log" "$release_log" "$cross_log"
}
trap stop_background EXIT
# Two builds the later steps need, started first, each in its own lock (cargo locks
# target/debug, target/release-semantics and target/cross apart) and at the lowest
# priority: on 2 cores, the installs', clippy's, the test build's and most tests'
# single-threaded stretches leave a core idle, and these take it. The binary with the
# release profile's behaviour, for the second pass below, needs nothing the install step
# brings; the aarch64 binary the package test runs under qemu-user needs its target and
# cross compiler.
in_background cargo build --profile release-semantics --package bootstage >"$release_log" 2>&1 &
release=$!
background+=("$release")
scripts/install-test-deps.sh
cargo fmt --all -- --check
in_background sh -c '. scripts/cross.sh && cross_test_build' >"$cross_log" 2>&1 &
cross=$!
background+=("$cross")

cargo clippy --workspace --all-targets -- -D warnings
status=0
# The integration tests' binary is run once more below, with the release-semantics build of
# bootstage: as built here. `cargo test --test it` would first build bootstage again for
# its narrower package selection (29 s of a warm run).
# bench-s3 serves the benchmark only; clippy above still checks it.
it_bin=$(cargo test --workspace --exclude bench-s3 --no-run --color never 2>&1 | tee /dev/stderr |
  sed -n 's|^ *Executable tests/it/main.rs (\(.*\))$|\1|p')
if [ ! -x "$it_bin" ]; then
  echo "cargo test --no-run named no integration test binary (tests/it/main.rs)" >&2
  exit 1
fi
# --no-fail-fast: a failing test binary must not hide the ones after it, or the closing
# line counts a part. Four at a time: most of them wait, not compute.
cargo test --workspace --exclude bench-s3 --no-fail-fast -- --test-threads=4 2>&1 | tee "$log" || status=$?
release_status=0
wait "$release" || release_status=$?
# Waited for: its process group id may be anyone's now.
background=("$cross")
if [ "$release_status" -ne 0 ]; then
  cat "$release_log"
  echo "the release-semantics build failed" >&2
  exit 1
fi
# The release profile's behaviour (panic = "abort", no overflow checks: Cargo.toml's
# release-semantics profile) for the stages that take untrusted input: the same test
# binary, pointed at that build of bootstage.
BOOTSTAGE_TEST_BIN="$PWD/target/release-semantics/bootstage" \
  "$it_bin" --test-threads=4 metadata_imds:: secrets:: s3_sync:: bundles:: \
  sync_hostile:: decode:: 2>&1 | tee -a "$log" || status=$?
# Each failed test's panic message again, last, where a CI log's tail shows it (libtest
# prints them before the release-semantics pass and the other binaries' results).
awk '/^---- .* stdout ----$/ { name = $2; left = 0 }
     /^stack backtrace:$/ || /^$/ { left = 0 }
     name != "" && /panicked at/ { print "FAILED " name ": " $0; left = 25; next }
     left > 0 { print "  " substr($0, 1, 300); left-- }' "$log" >&2
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
