// Package nsfs pins network namespaces under /run/netns, as iproute2 does,
// so that they outlive the process that made them, and enters them. It
// needs nothing but system calls, so the run path of cilo can use it
// without linking netlink or nftables.
package nsfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted, as iproute2
// does, so that they outlive the process that made them and `ip netns`
// lists them.
const Dir = "/run/netns"

// Path is the bind mount of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create makes a new network namespace and pins it at Path(name).
// It fails if the name is taken.
func Create(name string) error {
	if err := sharedDir(); err != nil {
		return err
	}
	path := Path(name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()

	// unshare moves the calling thread into the new namespace. The
	// goroutine keeps its thread locked and exits, so the Go runtime
	// retires that thread instead of reusing it in the wrong namespace.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("pin network namespace at %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

// sharedDir makes /run/netns a shared mount of itself, exactly as
// iproute2 does before its first `ip netns add`. Were cilo to pin
// namespaces on the plain directory, a later `ip netns` would bind the
// directory over itself, hiding cilo's pins underneath where they can no
// longer be unmounted or removed; and namespaces pinned here propagate into
// the mount namespaces of processes run in envs.
func sharedDir() error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir, err)
	}
	err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("make %s a shared mount: %w", Dir, err)
	}
	// Not a mount point yet: bind it over itself, then share it.
	if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s over itself: %w", Dir, err)
	}
	if err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", Dir, err)
	}
	return nil
}

// Delete unpins the named namespace; the kernel frees it, and the veth
// ends inside it, once no process uses it. A missing namespace is not an
// error.
func Delete(name string) error {
	path := Path(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// Exists reports whether the named namespace is pinned.
func Exists(name string) bool {
	var st, parent unix.Statfs_t
	if unix.Statfs(Path(name), &st) != nil || unix.Statfs(Dir, &parent) != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// Do runs fn on a thread that has joined the named namespace. The
// thread is retired afterwards rather than returned to the scheduler.
func Do(name string, fn func() error) error {
	f, err := os.Open(Path(name))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
