#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh Debian 12 machine:
# Debian's packages for the lab (sshd, dockerd, the registry binary, real clients)
# and a Python virtual environment in .venv with the project's requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  openssh-server openssh-client iproute2 iptables openssl curl ca-certificates
  docker.io docker-registry skopeo podman containerd sudo
  rootlesskit uidmap slirp4netns
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
    || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing Debian packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # The packages' own services must not start on the control machine: the lab runs
  # its own daemons inside network namespaces. A policy the machine already has is
  # put back afterwards.
  policy=/usr/sbin/policy-rc.d
  saved=''
  if [ -e "$policy" ]; then
    saved=$(mktemp) && cp -p "$policy" "$saved"
  fi
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || status=$?
  if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
  [ "$status" -eq 0 ] || exit "$status"
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -r requirements-dev.txt
echo "dependencies ready: $(.venv/bin/fab --version | sed -n 1p), $(dockerd --version)"
