package overlayfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/overlayfs/erofs"
	"github.com/cilo-dev/cilo/overlayfs/loopfs"
	"github.com/cilo-dev/cilo/overlayfs/mounted"
)

// mountSource names cilo's overlay mounts in /proc/self/mountinfo, so that
// doctor can tell them from everyone else's.
const mountSource = "cilo-workspace"

// overlayOptions builds the mount data. Redirects, metacopy and the inode
// index stay off: with them a renamed directory or a chmod would be recorded
// as xattrs that Diff could not read as plain added or modified files.
func overlayOptions(layers []string, upper, work string, plain bool) (string, error) {
	data := "lowerdir=" + strings.Join(layers, ":") + ",upperdir=" + upper + ",workdir=" + work
	if !plain {
		data += ",index=off,redirect_dir=off,metacopy=off"
	}
	if len(data) >= unix.Getpagesize() {
		return "", fmt.Errorf("overlay options for %d layers: %d bytes, over the kernel's page limit", len(layers), len(data))
	}
	return data, nil
}

func mountOverlay(layers []string, upper, work, target string) error {
	data, err := overlayOptions(layers, upper, work, false)
	if err != nil {
		return err
	}
	err = unix.Mount(mountSource, target, "overlay", unix.MS_NOATIME, data)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 4.19 know none of the three feature options;
		// they also have none of the features, so plain options are the same.
		plain, _ := overlayOptions(layers, upper, work, true)
		err = unix.Mount(mountSource, target, "overlay", unix.MS_NOATIME, plain)
	}
	if err != nil {
		return fmt.Errorf("mount overlay at %s: %w", target, err)
	}
	return nil
}

// unmount unmounts dir if an overlay is mounted there. detach falls back to
// a lazy unmount when processes still use it.
func unmount(dir string, detach bool) error {
	if !mounted.Overlay(dir) {
		return nil
	}
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EBUSY) && detach {
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// imageFlags mount base images read-only; they hold no devices.
const imageFlags = unix.MS_RDONLY | unix.MS_NODEV

// mountImage mounts the EROFS image read-only at dir: from the file itself
// where the kernel can (CONFIG_EROFS_FS_BACKED_BY_FILE, Linux 6.12 on),
// else through a loop device that lets go of the image with the mount.
func mountImage(image, dir string) error {
	err := unix.Mount(image, dir, "erofs", imageFlags, "")
	if err == nil {
		return nil
	}
	if lerr := mountImageLoop(image, dir); lerr != nil {
		return fmt.Errorf("mount erofs image %s at %s: %w (through a loop device: %v)", image, dir, err, lerr)
	}
	return nil
}

func mountImageLoop(image, dir string) error {
	dev, fd, err := loopfs.Attach(image, true)
	if err != nil {
		return err
	}
	// Autoclear: the device goes with its last user, the mount from now on.
	defer unix.Close(fd)
	if err := unix.Mount(dev, dir, "erofs", imageFlags, ""); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	return nil
}

// imageMounted reports whether an EROFS is mounted at dir (and not merely
// around it).
func imageMounted(dir string) bool {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || uint32(fs.Type) != erofs.MagicNumber {
		return false
	}
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// unmountImage unmounts the image mounted at dir, if any; lazily when
// something still uses it (an overlay keeps its own reference).
func unmountImage(dir string) error {
	if !imageMounted(dir) {
		return nil
	}
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// removeLayerDir removes a base directory (built, being built or
// collected), unmounting its image first: a removal must never reach into
// a mounted image, nor leave the mount behind.
func removeLayerDir(dir string) error {
	if err := unmountImage(filepath.Join(dir, "t")); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// probeOverlay mounts a throwaway overlay under dir to learn whether this
// host (kernel, privileges, the root's filesystem as upper) supports it.
func probeOverlay(dir string) error {
	p, err := os.MkdirTemp(dir, "probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(p)
	for _, d := range []string{"l", "u", "w", "m"} {
		if err := os.Mkdir(filepath.Join(p, d), 0o755); err != nil {
			return err
		}
	}
	if err := mountOverlay([]string{p + "/l"}, p+"/u", p+"/w", p+"/m"); err != nil {
		return err
	}
	return unmount(p+"/m", true)
}

// flock takes an exclusive lock on path, creating it, and returns the
// unlock function.
func flock(path string, nonBlock bool) (func(), error) {
	fd, err := lockFD(path, nonBlock)
	if err != nil {
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

// lockFD takes an exclusive lock on path, creating it, and returns the
// descriptor that holds it (the lock goes with its last copy).
func lockFD(path string, nonBlock bool) (int, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return -1, fmt.Errorf("open lock %s: %w", path, err)
	}
	how := unix.LOCK_EX
	if nonBlock {
		how |= unix.LOCK_NB
	}
	for {
		err = unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("lock %s: %w", path, err)
	}
	return fd, nil
}

// makeWhiteout records in an overlay layer that rel was deleted.
func makeWhiteout(path string) error {
	if err := unix.Mknod(path, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("create whiteout %s: %w", path, err)
	}
	return nil
}

func isWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// isOpaque reports a directory of an upper layer that hides everything of
// the same name below it (the directory was removed and made again).
func isOpaque(path string) bool {
	buf := make([]byte, 8)
	for _, name := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		n, err := unix.Lgetxattr(path, name, buf)
		if err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}

// syncFS flushes the filesystem holding dir.
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
