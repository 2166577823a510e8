#!/usr/bin/env bash
# The full test suite, after installing what it needs. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# bench-s3 serves the benchmark only; clippy above still checks it. --no-fail-fast: a
# failing test binary must not hide the ones after it, or the closing line counts a part.
cargo test --workspace --exclude bench-s3 --no-fail-fast 2>&1 | tee "$log" || status=$?
# The release profile (panic = "abort", LTO) runs the stages that take untrusted input
# again: the same test binary, pointed at the release build of bootstage.
cargo build --release --package bootstage
BOOTSTAGE_TEST_BIN="$PWD/target/release/bootstage" \
  cargo test --test it --no-fail-fast -- metadata_imds:: secrets:: s3_sync:: bundles:: \
  sync_hostile:: decode:: 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
