#!/usr/bin/env bash
# Debian packages the dev cluster's node and its image builds need: containerd, runc and
# the CNI plugins (the node), buildah/umoci/skopeo (images without a registry),
# debootstrap (the local Python base image), busybox-static (test pods), iptables,
# nftables and conntrack (kube-proxy), openssh-client (git over ssh, and the tests' check
# of the training pod's GIT_SSH_COMMAND). Go comes from the toolchain the cluster binaries
# use, not from here.
# Idempotent: does nothing once every tool is on PATH. Installs when run as root (CI and
# the dev machines); otherwise says what to run and fails. apt does not start containerd
# here (no systemd); the dev cluster starts its own with private state.
set -euo pipefail

PACKAGES=(containerd runc containernetworking-plugins umoci skopeo buildah busybox-static
          iptables nftables conntrack debootstrap openssh-client)
# One file per package that proves it is installed.
CHECKS=(/usr/bin/containerd /usr/sbin/runc /usr/lib/cni/bridge /usr/bin/umoci /usr/bin/skopeo
        /usr/bin/buildah /bin/busybox /usr/sbin/iptables /usr/sbin/nft /usr/sbin/conntrack
        /usr/sbin/debootstrap /usr/bin/ssh)

missing=()
for i in "${!PACKAGES[@]}"; do
    [[ -e "${CHECKS[$i]}" ]] || missing+=("${PACKAGES[$i]}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-node-deps: missing ${missing[*]}; as root run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
