package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/nsnet/nsfs"
)

// checkPrivilege fails early, before anything is created, when cilo cannot
// make namespaces, bridges and mounts.
func checkPrivilege() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	have := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if !have(unix.CAP_NET_ADMIN) || !have(unix.CAP_SYS_ADMIN) {
		return fmt.Errorf("%w: cilo needs CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces, bridges and mounts: run it as root (sudo cilo ...)", ErrPrivilege)
	}
	return nil
}

// processAlive reports whether pid still runs (an intent whose process is
// gone was interrupted).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// netnsProcesses lists the processes whose network namespace is the named
// one: what `cilo run` started in the env and left running.
func netnsProcesses(name string) ([]int, error) {
	var want unix.Stat_t
	if err := unix.Stat(nsfs.Path(name), &want); err != nil {
		return nil, fmt.Errorf("stat netns %s: %w", name, err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killNetnsProcesses stops every process in the env's namespace: SIGTERM,
// then SIGKILL for those still there after a grace period.
func killNetnsProcesses(ctx context.Context, name string) error {
	pids, err := netnsProcesses(name)
	if err != nil || len(pids) == 0 {
		return err
	}
	for _, pid := range pids {
		unix.Kill(pid, unix.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if pids, _ = netnsProcesses(name); len(pids) == 0 {
			return nil
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			break
		}
	}
	for _, pid := range pids {
		unix.Kill(pid, unix.SIGKILL)
	}
	return nil
}
