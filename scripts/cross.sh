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
