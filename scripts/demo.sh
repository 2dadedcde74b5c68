#!/bin/sh
# demo.sh: the README's first command (sudo make demo). On a fresh Debian
# machine it installs and starts containerd, builds cilo and the bundled
# example's images from Go sources in this repository (nothing from a
# registry), brings up three envs of examples/counter in parallel, and shows
# that each env answers with its own independent state.
set -eu

cd "$(dirname "$0")/.."
repo=$(pwd)
cilo="$repo/bin/cilo"
envs="demo-1 demo-2 demo-3"

if [ "$(id -u)" != 0 ]; then
	echo "demo: run as root (sudo make demo): cilo creates namespaces, bridges and containers" >&2
	exit 1
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "containerd"
./scripts/ensure-containerd.sh

step "build cilo"
# cilo, cilo-core and cilo-compose; quick when nothing changed.
make -s build
ls "$repo"/bin/cilo*

step "build the example's images from examples/counter (static Go binaries, no registry)"
imgdir=$(mktemp -d /tmp/cilo-demo-images.XXXXXX)
trap 'rm -rf "$imgdir"' EXIT
for svc in kv migrate api web; do
	go run ./test/images/mkimage -ref "counter-$svc" -o "$imgdir/$svc.tar" \
		-go "./examples/counter/$svc=/$svc" -entrypoint "/$svc" &
done
wait
for svc in kv migrate api web; do
	"$cilo" image load "$imgdir/$svc.tar"
done

step "bring up $envs in parallel"
cd "$repo/examples/counter"
pids=""
for e in $envs; do
	"$cilo" up "$e" >"$imgdir/up-$e.log" 2>&1 &
	pids="$pids $!"
done
fail=0
for p in $pids; do wait "$p" || fail=1; done
for e in $envs; do cat "$imgdir/up-$e.log"; done
[ "$fail" = 0 ] || { echo "demo: an env failed to come up (logs above)" >&2; exit 1; }

step "each env has its own state: count visits in each"
for e in $envs; do
	n=1
	[ "$e" = demo-2 ] && n=3
	[ "$e" = demo-3 ] && n=5
	i=0
	while [ "$i" -lt "$n" ]; do
		out=$("$cilo" run -e "$e" -- curl -fsS http://localhost:8080/count)
		i=$((i + 1))
	done
	printf '%s: %d visits; localhost:8080/count inside the env -> %s\n' "$e" "$n" "$out"
	printf '%s: localhost:3000 (web) inside the env -> ' "$e"
	"$cilo" run -e "$e" -- curl -fsS http://localhost:3000/
	# From the host: the service by its DNS name when the host resolves
	# cilo's names, else by its address.
	host="api.$e.test"
	getent hosts "$host" >/dev/null 2>&1 ||
		host=$("$cilo" ps "$e" --json | awk -F'"' '/"service": "api"/ { f = 1 } f && /"addr"/ { print $4; exit }')
	printf '%s: from the host, http://%s:8080/count -> %s\n' "$e" "$host" "$(curl -fsS "http://$host:8080/count")"
done

step "services of demo-1"
"$cilo" ps demo-1

cat <<EOT

Look around (from examples/counter):
  cd examples/counter
  sudo $cilo ps demo-2                       # containers, addresses
  sudo $cilo logs demo-2 api                 # one service's log (-f to follow)
  sudo $cilo exec demo-2 kv /kv -check http://localhost:6379/healthz
  sudo $cilo run -e demo-3 -- curl -s localhost:8080/count
  sudo $cilo shell demo-1                    # a shell inside the env
  curl http://api.demo-1.test:8080/count     # from the host, once cilo's DNS is set up
  sudo ctr -n cilo c ls                      # the containers as containerd sees them

Clean up:
  cd examples/counter && sudo $cilo destroy --force $envs
EOT
