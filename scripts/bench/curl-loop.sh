#!/bin/sh
# The baseline: what an operator writes without bootstage. Fetch an IMDSv2 token, poll
# user-data with curl until it appears, decode it. Usage: curl-loop.sh ENDPOINT OUT SLEEP
ep=$1 out=$2 pause=$3
token=$(curl -sf -m 2 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" "$ep/latest/api/token")
until curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" -o "$out.b64" "$ep/latest/user-data"; do
  sleep "$pause"
done
base64 -d "$out.b64" > "$out"
