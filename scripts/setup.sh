#!/bin/sh
# setup.sh: install what cilo, its tests and its benchmarks need on a fresh
# Debian machine, and start containerd. Safe to run again; run as root.
# Used by `make test`, `make demo`, `make bench` (with --bench) and CI.
set -eu

if [ "$(id -u)" != 0 ]; then
	echo "setup: run as root (sudo make ...): cilo creates namespaces, bridges and mounts" >&2
	exit 1
fi

# command:package pairs; only what is missing is installed.
need="ip:iproute2 nft:nftables git:git containerd:containerd runc:runc
mkfs.xfs:xfsprogs busybox:busybox-static dnsmasq:dnsmasq-base dnsperf:dnsperf
getent:libc-bin useradd:passwd filefrag:e2fsprogs losetup:mount curl:curl
unshare:util-linux patch:patch script:bsdutils fsck.erofs:erofs-utils"
# --bench adds the anchors make bench compares cilo with.
if [ "${1:-}" = --bench ]; then
	need="$need podman:podman podman-compose:podman-compose"
fi
missing=""
for pair in $need; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
if [ -n "$missing" ]; then
	echo "setup: installing$missing" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq $missing >/dev/null
fi
if ! command -v go >/dev/null 2>&1; then
	echo "setup: Go is not installed (https://go.dev/doc/install); cilo builds with Go 1.22 or newer" >&2
	exit 1
fi
modprobe overlay 2>/dev/null || true
"$(dirname "$0")/ensure-containerd.sh"
