#!/usr/bin/env bash
# The chain on this machine, no cloud: the project's IMDS emulator on 127.0.0.1 serves
# user-data that appears only after 2 s, as early in a real boot; moto's server on
# 127.0.0.1 stands in for SSM, which holds the database password the parameters name (when
# moto is installed: pip install 'moto[server]', as scripts/test.sh does; without it the
# demo's copy of the parameters holds a literal instead); bootstage metadata waits for
# user-data, resolves the reference and writes its files; bootstage s3-sync then syncs the directory the parameters
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
emulator_pid= moto_pid=
cleanup() {
  [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The example parameters, with the sync pointed at examples/config on this machine, and no
# owner (the demo runs as you, on a machine that may have no user "app" to hand files to).
sed "s|s3://example-config/shop-web/staging/|file://$PWD/examples/config/|; s|/srv/shop-web/config|$work/srv/config|; s|\"owner\": \"app\", ||" \
  examples/params.json > "$work/params.json"
# The password is a reference, {"ssm": "/shop-web/staging/db-password"}: put it in moto's
# SSM. Only loopback, and no AWS profile of yours is read.
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
if python3 -c 'import moto.server, boto3' 2>/dev/null; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m moto.server -H 127.0.0.1 -p "$port" > "$work/moto.out" 2>&1 &
  moto_pid=$!
  export AWS_ENDPOINT_URL_SSM="http://127.0.0.1:$port" AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
  python3 - <<'PUT'
import os, time, boto3
ssm = boto3.client("ssm", endpoint_url=os.environ["AWS_ENDPOINT_URL_SSM"], region_name="us-east-1",
                   aws_access_key_id="demo", aws_secret_access_key="demo")
for attempt in range(100):  # moto starting: at most 10 s
    try:
        ssm.put_parameter(Name="/shop-web/staging/db-password", Value="demo-secret-from-ssm",
                          Type="SecureString", Overwrite=True)
        break
    except Exception:
        if attempt == 99:
            raise
        time.sleep(0.1)
PUT
  echo "== moto's SSM at $AWS_ENDPOINT_URL_SSM holds /shop-web/staging/db-password"
else
  sed -i 's|{ "ssm": "/shop-web/staging/db-password" }|"demo-secret-literal"|' "$work/params.json"
  echo "== no moto (pip install 'moto[server]'): the demo's parameters hold the password as a literal"
fi
base64 -w 76 "$work/params.json" > "$work/user-data"
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
# Every stage below that would reach for IMDS reaches the emulator, never the real address;
# the provider is EC2's whatever this machine's DMI says (a VM on Compute Engine or Azure
# names its cloud), and the other clouds' metadata services are a closed loopback port.
export AWS_EC2_METADATA_SERVICE_ENDPOINT="$endpoint" BOOTSTAGE_PROVIDER=aws
export GCE_METADATA_HOST=127.0.0.1:9 BOOTSTAGE_AZURE_IMDS=http://127.0.0.1:9
export BOOTSTAGE_AZURE_WIRESERVER=http://127.0.0.1:9 BOOTSTAGE_OPENSTACK_METADATA=http://127.0.0.1:9
echo "== bootstage metadata"
"$bin/bootstage" metadata --imds-endpoint "$endpoint"

for f in params.json instance.json params.env; do
  echo "== $BOOTSTAGE_STATE_DIR/$f ($(stat -L -c %a "$BOOTSTAGE_STATE_DIR/$f"))"
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
"$bin/bootstage" launch -- sh -c 'echo "$APP_NAME ($APP_ENVIRONMENT) on port $APP_PORT, instance $BOOTSTAGE_INSTANCE_ID in $BOOTSTAGE_REGION; config: $(cat "$1"/app.conf | tr "\n" " ")"; echo "db password: ${#DB_PASSWORD} characters"' sh "$work/srv/config"

echo "== the same off-cloud, from a file (the demo's copy of examples/params.json)"
"$bin/bootstage" metadata --user-data-file "$work/params.json" --fact region=local-1 --fact instance-id=i-devvm
grep BOOTSTAGE_ "$BOOTSTAGE_STATE_DIR/params.env"
