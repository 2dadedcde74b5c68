#!/bin/sh
# ensure-containerd.sh: make sure containerd and runc are installed and a
# containerd daemon answers on its socket. Safe to run again and again; run
# as root on a Debian/Ubuntu machine. Used by `make demo`, CI (.ci/run) and
# by hand when a cilo test says containerd is not running.
set -eu

address="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
logfile="${CONTAINERD_LOG:-/var/log/cilo-containerd.log}"

if [ "$(id -u)" != 0 ]; then
	echo "ensure-containerd: run as root (sudo $0)" >&2
	exit 1
fi

missing=""
command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
command -v runc >/dev/null 2>&1 || missing="$missing runc"
if [ -n "$missing" ]; then
	echo "ensure-containerd: installing$missing" >&2
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc >/dev/null
fi

answers() { ctr --address "$address" --timeout 2s version >/dev/null 2>&1; }

if answers; then
	exit 0
fi

# Prefer the service manager when there is one; fall back to starting the
# daemon ourselves (containers, CI jobs and test machines have no systemd).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl start containerd >/dev/null 2>&1 || true
fi
if ! answers; then
	echo "ensure-containerd: starting containerd (log: $logfile)" >&2
	mkdir -p "$(dirname "$logfile")"
	if [ "$address" = /run/containerd/containerd.sock ]; then
		nohup containerd >>"$logfile" 2>&1 </dev/null &
	else
		nohup containerd --address "$address" >>"$logfile" 2>&1 </dev/null &
	fi
fi
i=0
while ! answers; do
	i=$((i + 1))
	if [ "$i" -gt 60 ]; then
		echo "ensure-containerd: containerd did not answer on $address within 30 s; see $logfile" >&2
		exit 1
	fi
	sleep 0.5
done
echo "ensure-containerd: containerd answers on $address" >&2
