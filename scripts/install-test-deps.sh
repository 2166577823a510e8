#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine. Idempotent: installs
# only what is missing. Called by scripts/test.sh, so CI gets the same.
set -euo pipefail

need_apt=()
for tool in dash:dash bash:bash curl:curl sh:dash; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
[ -x /usr/bin/time ] || need_apt+=(time)
# The boot test: a Debian rootfs built with mmdebstrap, booted with systemd-nspawn.
command -v mmdebstrap >/dev/null 2>&1 || need_apt+=(mmdebstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
# The packages (scripts/build-packages.sh, tests/it/packages.rs): rpm to inspect and install
# an RPM here, the aarch64 cross compiler (linker, and C for aws-lc-sys) and qemu-user to
# run what it builds, file to tell the two apart.
command -v rpm >/dev/null 2>&1 && command -v rpmbuild >/dev/null 2>&1 || need_apt+=(rpm)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || need_apt+=(qemu-user-static)
command -v file >/dev/null 2>&1 || need_apt+=(file)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# A real S3-compatible server for the sync tests, pinned: the tests depend on its quirks
# (multipart ETags, XML denials for JSON APIs, IAM enforcement after N setup calls).
MOTO_VERSION=5.2.1
if [ "$(python3 -c "import moto.server, flask, flask_cors, moto; print(moto.__version__)" 2>/dev/null)" != "$MOTO_VERSION" ]; then
  echo "installing moto[server]==$MOTO_VERSION"
  python3 -m pip install --quiet "moto[server]==$MOTO_VERSION"
fi

# The example infrastructure (tests/it/cloudformation.rs): cfn-lint checks the CloudFormation
# template against AWS's resource schemas, which it carries (no network when it runs);
# python-hcl2 parses the Packer recipe. Pinned: a new release may add rules or change the
# parse under the tests.
CFN_LINT_VERSION=1.51.0
PYTHON_HCL2_VERSION=8.1.4
if [ "$(python3 -c "import importlib.metadata as m; print(m.version('cfn-lint'))" 2>/dev/null)" != "$CFN_LINT_VERSION" ]; then
  echo "installing cfn-lint==$CFN_LINT_VERSION"
  python3 -m pip install --quiet "cfn-lint==$CFN_LINT_VERSION"
fi
if [ "$(python3 -c "import importlib.metadata as m; print(m.version('python-hcl2'))" 2>/dev/null)" != "$PYTHON_HCL2_VERSION" ]; then
  echo "installing python-hcl2==$PYTHON_HCL2_VERSION"
  python3 -m pip install --quiet "python-hcl2==$PYTHON_HCL2_VERSION"
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

# The Debian package (scripts/build-deb.sh; the boot test installs it): cargo-deb, pinned
# so a new release cannot change the package under the tests; dpkg-dev for its
# shared-library dependency detection (dpkg-shlibdeps).
command -v dpkg-shlibdeps >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev
}
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu ||
  rustup target add aarch64-unknown-linux-gnu
# cargo-deb is built for the tests, not shipped: a debug build (36 CPU-seconds instead of
# 80; it only copies files and calls dpkg's tools). The RPM needs no cargo tool: rpmbuild,
# from the rpm package above, packs it (scripts/build-rpm.sh).
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb 3.8.0" ]; then
  echo "installing cargo-deb 3.8.0"
  cargo install --quiet --locked --debug --version 3.8.0 cargo-deb
fi
