#!/bin/sh
# Create the namespace and register comfy-warmpool's search attributes, then exit: the
# `temporal-setup` service of docker-compose.yml (idempotent; run it again at will).
# The attributes are the names of warmpool/search_attributes.py (tests/test_compose.py checks).
set -eu

ADDRESS="${TEMPORAL_ADDRESS:-temporal:7233}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
RETENTION="${TEMPORAL_RETENTION:-72h}"
ATTRIBUTES="WarmPoolName:Keyword WarmPoolSlotState:Keyword WarmPoolInstanceId:Int WarmPoolEnvVersion:Keyword"

echo "waiting for Temporal at $ADDRESS"
until temporal operator cluster health --address "$ADDRESS" >/dev/null 2>&1; do sleep 2; done

if temporal operator namespace describe -n "$NAMESPACE" --address "$ADDRESS" >/dev/null 2>&1; then
  echo "namespace $NAMESPACE exists"
else
  temporal operator namespace create -n "$NAMESPACE" --retention "$RETENTION" --address "$ADDRESS"
fi

# A new namespace reaches every frontend's cache only after a while: wait until it answers.
tries=0
until existing="$(temporal operator search-attribute list -n "$NAMESPACE" --address "$ADDRESS" 2>&1)"; do
  tries=$((tries + 1))
  [ "$tries" -ge 60 ] && { echo "$existing"; exit 1; }
  sleep 2
done
for pair in $ATTRIBUTES; do
  name="${pair%%:*}"
  kind="${pair##*:}"
  if printf '%s\n' "$existing" | grep -qw "$name"; then
    echo "search attribute $name exists"
  else
    temporal operator search-attribute create -n "$NAMESPACE" --address "$ADDRESS" \
      --name "$name" --type "$kind"
  fi
done
echo "namespace $NAMESPACE ready"
