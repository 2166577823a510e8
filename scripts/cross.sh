# Sourced by the package scripts: `set_target x86_64|aarch64` sets $cargo_target (the
# cargo flags) and the cross toolchain for aarch64 (Debian's gcc-aarch64-linux-gnu, which
# scripts/install-test-deps.sh installs, as the linker and the C compiler aws-lc-sys needs).
cargo_target=
set_target() {
  case $1 in
    x86_64|x86_64-unknown-linux-gnu) cargo_target= ;;
    aarch64|arm64|aarch64-unknown-linux-gnu)
      cargo_target="--target aarch64-unknown-linux-gnu"
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
      export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
      export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
      export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar ;;
    *) echo "unknown target $1 (x86_64 or aarch64)" >&2; exit 64 ;;
  esac
}

# The aarch64 binary the package test runs under qemu-user (tests/it/packages.rs), which
# scripts/test.sh starts building first, beside everything else: a dev build like the
# tests', in its own target directory, so that it never waits on (or holds up) the lock
# of target/debug, and without debug info for bootstage itself (nobody debugs it under
# qemu; the dependencies have none in dev builds already). At the lowest priority: it
# fills the cores the foreground leaves idle.
cross_test_build() {
  set_target aarch64
  CARGO_TARGET_DIR=target/cross CARGO_PROFILE_DEV_DEBUG=0 nice -n 19 \
    cargo build --quiet --package bootstage $cargo_target
}
cross_test_binary=target/cross/aarch64-unknown-linux-gnu/debug/bootstage
