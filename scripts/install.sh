#!/bin/sh
# Installs bootstage and its units under DESTDIR (empty: this machine) and enables
# bootstage.target; idempotent. (The Debian package, scripts/build-deb.sh, does the same
# plus the man page and completions.) For an image build: DESTDIR=/mnt/image scripts/install.sh
#   scripts/install.sh [--binary PATH]     install (default binary: target/release/bootstage)
#   scripts/install.sh --uninstall         remove what install put there
set -eu
cd "$(dirname "$0")/.."
dest=${DESTDIR:-}
binary=target/release/bootstage
action=install
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --uninstall) action=uninstall; shift ;;
    *) echo "usage: $0 [--binary PATH] [--uninstall]" >&2; exit 64 ;;
  esac
done
units="bootstage-metadata.service bootstage-s3-sync.service bootstage-hooks.service bootstage.target bootstage-ready.service bootstage-failure@.service bootstage-lifecycle.service bootstage-in-service.service bootstage-in-service.target bootstage-resume.service"
unitdir=$dest/usr/lib/systemd/system
wants=$dest/etc/systemd/system/multi-user.target.wants

if [ "$action" = uninstall ]; then
  rm -f "$wants/bootstage.target" "$dest/usr/bin/bootstage" "$dest/usr/share/doc/bootstage/README.md"
  for t in hibernate hybrid-sleep suspend-then-hibernate; do
    rm -f "$dest/etc/systemd/system/$t.target.wants/bootstage-resume.service"
    rmdir "$dest/etc/systemd/system/$t.target.wants" 2>/dev/null || true
  done
  rmdir "$dest/usr/share/doc/bootstage" 2>/dev/null || true
  for u in $units; do rm -f "$unitdir/$u"; done
  # Empty hook dirs go; the operator's hooks and markers stay.
  rmdir "$dest/etc/bootstage/hooks/per-instance.d" "$dest/etc/bootstage/hooks/per-boot.d" \
    "$dest/etc/bootstage/hooks/per-start.d" \
    "$dest/etc/bootstage/hooks" "$dest/etc/bootstage" 2>/dev/null || true
  [ -z "$dest" ] && command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
  echo "bootstage removed (configuration in $dest/etc/bootstage kept)"
  exit 0
fi

[ -x "$binary" ] || { echo "$binary: build it first (cargo build --release)" >&2; exit 66; }
# Every directory and file with an explicit owner and mode, whatever the caller's umask:
# bootstage runs hooks from /etc/bootstage/hooks as root and refuses any that another
# user could change (a umask of 000 would have made them world-writable).
for d in /usr /usr/bin /usr/lib /usr/lib/systemd /usr/lib/systemd/system /usr/share \
         /usr/share/doc /usr/share/doc/bootstage /etc /etc/systemd /etc/systemd/system \
         /etc/systemd/system/multi-user.target.wants /etc/bootstage /etc/bootstage/hooks \
         /etc/bootstage/hooks/per-instance.d /etc/bootstage/hooks/per-boot.d \
         /etc/bootstage/hooks/per-start.d; do
  [ -d "$dest$d" ] || install -d -o root -g root -m 0755 "$dest$d"
done
install -o root -g root -m 0755 "$binary" "$dest/usr/bin/bootstage"
install -o root -g root -m 0644 README.md "$dest/usr/share/doc/bootstage/README.md"
for u in $units; do install -o root -g root -m 0644 "systemd/$u" "$unitdir/$u"; done
# Enabling is one symlink; made directly so it works the same offline (DESTDIR).
ln -sfn /usr/lib/systemd/system/bootstage.target "$wants/bootstage.target"
# A resume from hibernation (a warm pool's Warmed:Hibernated) is no boot: its own unit.
for t in hibernate hybrid-sleep suspend-then-hibernate; do
  [ -d "$dest/etc/systemd/system/$t.target.wants" ] ||
    install -d -o root -g root -m 0755 "$dest/etc/systemd/system/$t.target.wants"
  ln -sfn /usr/lib/systemd/system/bootstage-resume.service \
    "$dest/etc/systemd/system/$t.target.wants/bootstage-resume.service"
done
[ -z "$dest" ] && command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
echo "bootstage installed under ${dest:-/}; bootstage.target enabled"
