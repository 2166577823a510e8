#!/bin/sh
# Installs bootstage under DESTDIR (empty: this machine) as the packages do (the asset list
# in Cargo.toml: the binary, the units, the man pages and shell completions, the examples,
# the preset, and /etc/bootstage/bootstage.env, which an existing one is kept over) and
# enables bootstage.target; idempotent. For an image build: DESTDIR=/mnt/image scripts/install.sh
#   scripts/install.sh [--binary PATH] [--assets DIR]
#                       install (default binary: target/release/bootstage; man pages and
#                       completions from DIR, default target/assets, which
#                       scripts/build-assets.sh makes when it is missing)
#   scripts/install.sh --uninstall         remove what install put there, but the config
set -eu
cd "$(dirname "$0")/.."
dest=${DESTDIR:-}
binary=target/release/bootstage
assets=
action=install
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --assets) assets=$2; shift 2 ;;
    --uninstall) action=uninstall; shift ;;
    *) echo "usage: $0 [--binary PATH] [--assets DIR] [--uninstall]" >&2; exit 64 ;;
  esac
done
examples="systemd/examples/myapp.service systemd/examples/myapp-user.service examples/iam-policy.json"
man1=$dest/usr/share/man/man1
bash_completion=$dest/usr/share/bash-completion/completions/bootstage
zsh_completion=$dest/usr/share/zsh/vendor-completions/_bootstage
fish_completion=$dest/usr/share/fish/vendor_completions.d/bootstage.fish
preset=$dest/usr/lib/systemd/system-preset/90-bootstage.preset
units="bootstage-metadata.service bootstage-s3-sync.service bootstage-hooks.service bootstage.target bootstage-ready.service bootstage-failure@.service bootstage-lifecycle.service bootstage-in-service.service bootstage-in-service.target bootstage-resume.service"
unitdir=$dest/usr/lib/systemd/system
wants=$dest/etc/systemd/system/multi-user.target.wants

if [ "$action" = uninstall ]; then
  rm -f "$wants/bootstage.target" "$dest/usr/bin/bootstage" "$dest/usr/share/doc/bootstage/README.md"
  rm -f "$man1"/bootstage.1.gz "$man1"/bootstage-*.1.gz "$bash_completion" "$zsh_completion" \
    "$fish_completion" "$preset"
  for f in $examples; do rm -f "$dest/usr/share/doc/bootstage/examples/${f##*/}"; done
  rm -f "$dest/usr/share/doc/bootstage/examples/bootstage-s3-sync.service.d/watch.conf"
  rmdir "$dest/usr/share/doc/bootstage/examples/bootstage-s3-sync.service.d" \
    "$dest/usr/share/doc/bootstage/examples" 2>/dev/null || true
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
  echo "bootstage removed (configuration in $dest/etc/bootstage kept: bootstage.env, hooks)"
  exit 0
fi

[ -x "$binary" ] || { echo "$binary: build it first (cargo build --release)" >&2; exit 66; }
if [ -z "$assets" ]; then
  assets=target/assets
  [ -f "$assets/man/bootstage.1.gz" ] || scripts/build-assets.sh
fi
[ -f "$assets/man/bootstage.1.gz" ] ||
  { echo "$assets: no man pages (scripts/build-assets.sh makes them)" >&2; exit 66; }
# Every directory and file with an explicit owner and mode, whatever the caller's umask:
# bootstage runs hooks from /etc/bootstage/hooks as root and refuses any that another
# user could change (a umask of 000 would have made them world-writable).
for d in /usr /usr/bin /usr/lib /usr/lib/systemd /usr/lib/systemd/system /usr/share \
         /usr/share/doc /usr/share/doc/bootstage /etc /etc/systemd /etc/systemd/system \
         /etc/systemd/system/multi-user.target.wants /etc/bootstage /etc/bootstage/hooks \
         /etc/bootstage/hooks/per-instance.d /etc/bootstage/hooks/per-boot.d \
         /etc/bootstage/hooks/per-start.d /usr/share/man /usr/share/man/man1 \
         /usr/share/bash-completion /usr/share/bash-completion/completions /usr/share/zsh \
         /usr/share/zsh/vendor-completions /usr/share/fish /usr/share/fish/vendor_completions.d \
         /usr/lib/systemd/system-preset /usr/share/doc/bootstage/examples \
         /usr/share/doc/bootstage/examples/bootstage-s3-sync.service.d; do
  [ -d "$dest$d" ] || install -d -o root -g root -m 0755 "$dest$d"
done
install -o root -g root -m 0755 "$binary" "$dest/usr/bin/bootstage"
install -o root -g root -m 0644 README.md "$dest/usr/share/doc/bootstage/README.md"
for u in $units; do install -o root -g root -m 0644 "systemd/$u" "$unitdir/$u"; done
for m in "$assets"/man/*.1.gz; do install -o root -g root -m 0644 "$m" "$man1/"; done
install -o root -g root -m 0644 "$assets/completions/bootstage.bash" "$bash_completion"
install -o root -g root -m 0644 "$assets/completions/_bootstage" "$zsh_completion"
install -o root -g root -m 0644 "$assets/completions/bootstage.fish" "$fish_completion"
for f in $examples; do
  install -o root -g root -m 0644 "$f" "$dest/usr/share/doc/bootstage/examples/"
done
install -o root -g root -m 0644 systemd/examples/bootstage-s3-sync.service.d/watch.conf \
  "$dest/usr/share/doc/bootstage/examples/bootstage-s3-sync.service.d/"
install -o root -g root -m 0644 packaging/90-bootstage.preset "$preset"
# The settings file is the operator's once installed (the packages' conffile): kept.
[ -e "$dest/etc/bootstage/bootstage.env" ] ||
  install -o root -g root -m 0644 packaging/bootstage.env "$dest/etc/bootstage/bootstage.env"
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
