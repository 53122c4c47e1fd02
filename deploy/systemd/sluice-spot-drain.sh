#!/bin/sh
# sluice-spot-drain: turns an EC2 spot interruption notice into a sluice drain.
#
# Polls the instance metadata service (IMDSv2) for spot/instance-action every few seconds. When
# EC2 posts the two-minute notice, it asks systemd to stop sluice.service: systemd sends
# SIGTERM, sluice stops receiving, finishes what it holds within worker.shutdown_grace (25 s),
# returns the rest to the queue (visible again at once, for the other instances) and exits 0,
# long before the instance goes away. Then this script exits.
#
# For sluice builds without their own watcher (the [spot] config section, `spot.enabled`); with
# it, prefer that and leave this unit out. Environment (all optional):
#   SLUICE_SPOT_UNIT              unit to stop (default sluice.service)
#   SLUICE_SPOT_POLL_SECONDS      poll interval (default 5)
#   AWS_EC2_METADATA_SERVICE_ENDPOINT   IMDS base URL (default http://169.254.169.254)
set -eu

unit=${SLUICE_SPOT_UNIT:-sluice.service}
every=${SLUICE_SPOT_POLL_SECONDS:-5}
imds=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}
imds=${imds%/}

log() { printf 'sluice-spot-drain: %s\n' "$*"; }

token=""
token_age=0
while :; do
  # IMDSv2 session token, renewed every 5 minutes (it is valid for 6 hours).
  if [ -z "$token" ] || [ "$token_age" -ge 300 ]; then
    token=$(curl -sf -m 2 -X PUT "$imds/latest/api/token" \
      -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' || true)
    token_age=0
  fi
  if [ -n "$token" ]; then
    # 404 while there is no notice; 200 with {"action":"terminate|stop|hibernate","time":...}.
    if action=$(curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" \
      "$imds/latest/meta-data/spot/instance-action"); then
      log "spot interruption notice: $action; stopping $unit to drain it"
      # --no-block: the stop is systemd's job from here on; this unit is bound to sluice and
      # is stopped along with it.
      systemctl stop --no-block "$unit"
      log "stop of $unit requested"
      exit 0
    fi
  else
    log "cannot get an IMDSv2 token from $imds; retrying"
  fi
  sleep "$every"
  token_age=$((token_age + every))
done
