#!/usr/bin/env bash
# The full test suite, after installing what it needs. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

log=$(mktemp)
release_log=$(mktemp)
trap 'rm -f "$log" "$release_log"' EXIT
status=0
# bench-s3 serves the benchmark only; clippy above still checks it.
cargo test --workspace --exclude bench-s3 --no-run
# The release build runs beside the tests (cargo locks target/debug and target/release
# apart): most tests wait on servers, boots and timers, and leave a core idle. At the
# lowest priority, so that the tests (some of which time what they wait for) come first.
nice -n 19 cargo build --release --package bootstage >"$release_log" 2>&1 &
release=$!
# --no-fail-fast: a failing test binary must not hide the ones after it, or the closing
# line counts a part. Four at a time: most of them wait, not compute.
cargo test --workspace --exclude bench-s3 --no-fail-fast -- --test-threads=4 2>&1 | tee "$log" || status=$?
if ! wait "$release"; then
  cat "$release_log"
  echo "the release build failed" >&2
  exit 1
fi
# The release profile (panic = "abort", LTO) runs the stages that take untrusted input
# again: the same test binary, pointed at the release build of bootstage.
BOOTSTAGE_TEST_BIN="$PWD/target/release/bootstage" \
  cargo test --test it --no-fail-fast -- --test-threads=4 metadata_imds:: secrets:: s3_sync:: bundles:: \
  sync_hostile:: decode:: 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
