#!/bin/sh
# Man pages and shell completions from the CLI definition (crates/xtask), into
# target/assets: what both packages ship beside the binary.
set -eu
cd "$(dirname "$0")/.."
assets=target/assets
rm -rf "$assets"
cargo run --quiet --package xtask -- assets "$assets"
gzip -9n "$assets"/man/*.1
