#!/usr/bin/env bash
# Is OpenSSH's sshd here for the ssh tests? Install it (Debian `openssh-server`) when it is not.
# Idempotent and quiet: does nothing when /usr/sbin/sshd exists; prints apt's output only on failure.
# Installing needs root (or passwordless sudo). Tests start their own sshd; none need a system one.
set -euo pipefail

SSHD=/usr/sbin/sshd
[ -x "$SSHD" ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
  else
    echo "ensure-sshd: $SSHD is missing and installing it needs root (no sudo found)" >&2
    exit 1
  fi
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -qq &&
       "${as_root[@]}" apt-get install -y -qq --no-install-recommends openssh-server; } >"$out" 2>&1; then
  cat "$out" >&2
  echo "ensure-sshd: installing openssh-server failed" >&2
  exit 1
fi
[ -x "$SSHD" ] || { echo "ensure-sshd: apt-get finished but $SSHD is still missing" >&2; exit 1; }
