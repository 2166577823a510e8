#!/bin/sh
# Installs bootstage into an image being built: the package of this machine's format
# (.deb where apt-get is, else .rpm) and architecture, from DIR as scripts/build-packages.sh
# writes it, checked against DIR/SHA256SUMS first; then the watch-mode drop-in; then
# `bootstage image prepare`, which removes what a boot of this machine left (per-instance
# markers, records, synced trees) so every instance of the image boots as a first boot.
# The same steps as examples/packer/bootstage.pkr.hcl, for EC2 Image Builder or any baker.
# When steps of yours follow this script, end with `sudo bootstage image prepare` instead,
# the last step before the image is captured (PREPARE=0 leaves it out here).
#
#   sudo sh install-bootstage.sh DIR               check, install, set up watch mode
#   sh install-bootstage.sh --check-only DIR       check the package only (no root needed)
#
# Environment: APP_UNIT (myapp.service) is the unit the watch drop-in reloads after a
# change; WATCH=0 leaves watch mode out; PREPARE=0 leaves out `bootstage image prepare`.
set -eu

check_only=0
if [ "${1:-}" = --check-only ]; then
  check_only=1
  shift
fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--check-only] DIR (the packages and SHA256SUMS of scripts/build-packages.sh)" >&2
  exit 64
fi
dir=$(cd "$1" && pwd)
app_unit=${APP_UNIT:-myapp.service}

# Which package: the format of the package manager, the architecture of the machine.
if command -v apt-get >/dev/null 2>&1; then
  format=deb
else
  format=rpm
fi
case $(uname -m) in
  x86_64) deb_arch=amd64 rpm_arch=x86_64 ;;
  aarch64 | arm64) deb_arch=arm64 rpm_arch=aarch64 ;;
  *) echo "install-bootstage: no package for $(uname -m)" >&2; exit 69 ;;
esac
if [ "$format" = deb ]; then
  pattern="bootstage_*-1_${deb_arch}.deb"
else
  pattern="bootstage-*-1.${rpm_arch}.rpm"
fi
set -- "$dir"/$pattern
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
  echo "install-bootstage: want exactly one $pattern in $dir" >&2
  exit 66
fi
package=$1
name=${package##*/}

# The checksum: the package must be listed in SHA256SUMS, and match.
if [ ! -f "$dir/SHA256SUMS" ]; then
  echo "install-bootstage: $dir/SHA256SUMS is missing" >&2
  exit 66
fi
line=$(grep -E "^[0-9a-f]{64} [ *]$name\$" "$dir/SHA256SUMS" || true)
if [ -z "$line" ]; then
  echo "install-bootstage: $name is not listed in SHA256SUMS" >&2
  exit 65
fi
if ! (cd "$dir" && printf '%s\n' "$line" | sha256sum -c -); then
  echo "install-bootstage: $name does not match its checksum in SHA256SUMS" >&2
  exit 65
fi
if [ "$check_only" = 1 ]; then
  exit 0
fi

# Install: enables bootstage.target, starts nothing (the stages run at the instances' boot).
if [ "$format" = deb ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$package"
else
  dnf install -y "$package"
fi

# Watch mode: keep syncing after the boot, reload the app after a change.
if [ "${WATCH:-1}" != 0 ]; then
  dropin=/etc/systemd/system/bootstage-s3-sync.service.d
  mkdir -p "$dropin"
  sed "s/myapp\.service/$app_unit/" \
    /usr/share/doc/bootstage/examples/bootstage-s3-sync.service.d/watch.conf > "$dropin/watch.conf"
  chmod 0644 "$dropin/watch.conf"
fi

bootstage --version
systemctl is-enabled bootstage.target

# The last step before the capture (refused, exit 75, while a bootstage unit runs).
if [ "${PREPARE:-1}" != 0 ]; then
  bootstage image prepare
fi
