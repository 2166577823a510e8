#!/usr/bin/env bash
# The chain on this machine, no cloud: the project's IMDS emulator on 127.0.0.1 serves
# user-data that appears only after 2 s, as early in a real boot; bootstage metadata waits
# for it and writes its files; bootstage s3-sync then syncs the directory the parameters
# name (a file:// source, as on a developer's VM) into place, atomically, twice; bootstage
# hooks runs a per-instance and a per-boot hook; status and query show the outcome;
# bootstage launch then execs an "app" with the parameters in its environment.
#
#   scripts/demo.sh                builds bootstage and the emulator (release), then runs
#   scripts/demo.sh --debug-build  runs the debug build as it is (tests/it/demo.rs does)
# Both find the build under $CARGO_TARGET_DIR if it is set, else under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
case "${1:-}" in
  "") cargo build --release --quiet -p bootstage -p imds-emulator; bin=$target/release ;;
  --debug-build) bin=$target/debug ;;
  *) echo "usage: $0 [--debug-build]" >&2; exit 64 ;;
esac
# In the clone's target/. bootstage runs hooks only from directories no one but their
# owner (or root) can write; a clone under /tmp is fine, as the sticky bit keeps others
# from renaming the clone away.
mkdir -p target
work=$(mktemp -d "$PWD/target/demo.XXXXXX")
emulator_pid=
cleanup() { [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The example parameters, with the sync pointed at examples/config on this machine.
sed "s|s3://example-config/shop-web/staging/|file://$PWD/examples/config/|; s|/srv/shop-web/config|$work/srv/config|" \
  examples/params.json | base64 -w 76 > "$work/user-data"
"$bin/imds-emulator" --listen 127.0.0.1:0 --user-data-file "$work/user-data" --user-data-after 2s > "$work/emulator.out" &
emulator_pid=$!
until grep -q "listening on" "$work/emulator.out" 2>/dev/null; do sleep 0.05; done
endpoint=$(awk '{print $3}' "$work/emulator.out")
echo "== IMDS emulator at $endpoint (user-data appears in 2 s)"

export BOOTSTAGE_STATE_DIR="$work/state"
# Hooks and their per-instance markers in the demo's own directory, not /etc or /var/lib.
export BOOTSTAGE_HOOKS_DIR="$work/hooks" BOOTSTAGE_LIB_DIR="$work/lib"
mkdir -p "$work/hooks/per-instance.d" "$work/hooks/per-boot.d"
printf '#!/bin/sh\necho "   per-instance hook: first boot of $BOOTSTAGE_INSTANCE_ID, setting up $APP_NAME"\n' > "$work/hooks/per-instance.d/10-setup"
printf '#!/bin/sh\necho "   per-boot hook: $BOOTSTAGE_HOOK"\n' > "$work/hooks/per-boot.d/10-every-boot"
chmod +x "$work/hooks/per-instance.d/10-setup" "$work/hooks/per-boot.d/10-every-boot"
# Every stage below that would reach for IMDS reaches the emulator, never the real address.
export AWS_EC2_METADATA_SERVICE_ENDPOINT="$endpoint"
echo "== bootstage metadata"
"$bin/bootstage" metadata --imds-endpoint "$endpoint"

for f in params.json instance.json params.env; do
  echo "== $BOOTSTAGE_STATE_DIR/$f ($(stat -c %a "$BOOTSTAGE_STATE_DIR/$f"))"
  cat "$BOOTSTAGE_STATE_DIR/$f"
done


echo "== bootstage s3-sync (the sync list from params.json)"
"$bin/bootstage" s3-sync
ls -l "$work/srv"
find -L "$work/srv/config" -type f | sort | while read -r f; do echo "-- ${f#$work/srv/}: $(cat "$f")"; done
echo "== again: nothing changed, nothing swapped"
"$bin/bootstage" s3-sync

echo "== bootstage hooks (twice: the per-instance hook runs once for this instance)"
"$bin/bootstage" hooks
"$bin/bootstage" hooks

echo "== bootstage status"
"$bin/bootstage" status
echo "== bootstage query app.port / instance.region"
"$bin/bootstage" query app.port
"$bin/bootstage" query instance.region

echo "== bootstage launch: the app, with the parameters in its environment"
"$bin/bootstage" launch -- sh -c 'echo "$APP_NAME ($APP_ENVIRONMENT) on port $APP_PORT, instance $BOOTSTAGE_INSTANCE_ID in $BOOTSTAGE_REGION; config: $(cat "$1"/app.conf | tr "\n" " ")"' sh "$work/srv/config"

echo "== the same off-cloud, from a file"
"$bin/bootstage" metadata --user-data-file examples/params.json --fact region=local-1 --fact instance-id=i-devvm
grep BOOTSTAGE_ "$BOOTSTAGE_STATE_DIR/params.env"
