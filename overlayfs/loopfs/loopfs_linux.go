// Package loopfs mounts a small filesystem kept in an image file on a loop
// device. Tests and benchmarks of overlayfs use it to get a filesystem with
// properties the host's may lack (XFS with reflink, a tiny disk that fills
// up) without touching any existing disk or mount; overlayfs attaches its
// EROFS base images with [Attach] where the kernel cannot mount them from
// the file itself.
package loopfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FS is a mounted image. Close unmounts it, which releases its loop device
// (the device is configured to clear itself), and deletes the image.
type FS struct {
	Dir   string // the mount point
	Dev   string // the loop device, e.g. /dev/loop3
	image string
}

// Mount makes an image file of size bytes (sparse) at image, formats it with
// mkfs.<fstype> and mkfsArgs, and mounts it at dir, which must exist.
func Mount(ctx context.Context, image string, size int64, fstype string, mkfsArgs []string, dir string) (_ *FS, err error) {
	f, err := os.OpenFile(image, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create image %s: %w", image, err)
	}
	defer func() {
		if err != nil {
			os.Remove(image)
		}
	}()
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size image %s: %w", image, err)
	}
	f.Close()
	args := append(append([]string{}, mkfsArgs...), image)
	if out, err := exec.CommandContext(ctx, "mkfs."+fstype, args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.%s %s: %w: %s", fstype, image, err, strings.TrimSpace(string(out)))
	}
	dev, fd, err := Attach(image, false)
	if err != nil {
		return nil, err
	}
	// Autoclear detaches the device when its last user goes: our descriptor
	// until the mount holds it, the mount after.
	defer unix.Close(fd)
	if err := unix.Mount(dev, dir, fstype, 0, ""); err != nil {
		return nil, fmt.Errorf("mount %s (%s) at %s: %w", dev, image, dir, err)
	}
	return &FS{Dir: dir, Dev: dev, image: image}, nil
}

// Attach binds image to a free loop device with autoclear set: the device
// lets go of the image once it is unmounted and no longer open. It returns
// the device and a descriptor holding it open, which the caller closes
// once the device is mounted (or no longer needed).
func Attach(image string, readOnly bool) (string, int, error) {
	mode := unix.O_RDWR
	if readOnly {
		mode = unix.O_RDONLY
	}
	img, err := unix.Open(image, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", -1, fmt.Errorf("open image %s: %w", image, err)
	}
	defer unix.Close(img)
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", -1, fmt.Errorf("open loop control: %w", err)
	}
	defer unix.Close(ctl)
	for try := 0; try < 20; try++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", -1, fmt.Errorf("find a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		if _, err := os.Stat(dev); errors.Is(err, os.ErrNotExist) {
			// No udev here: make the node the kernel just allocated.
			if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
				return "", -1, fmt.Errorf("create %s: %w", dev, err)
			}
		}
		fd, err := unix.Open(dev, mode|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", -1, fmt.Errorf("open %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(img)}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		if readOnly {
			cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
		}
		copy(cfg.Info.File_name[:], filepath.Base(image))
		err = unix.IoctlLoopConfigure(fd, &cfg)
		if err != nil {
			unix.Close(fd)
		}
		if errors.Is(err, unix.EBUSY) {
			// Another process took this device between the two calls.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			return "", -1, fmt.Errorf("configure %s for %s: %w", dev, image, err)
		}
		return dev, fd, nil
	}
	return "", -1, fmt.Errorf("attach %s: no free loop device", image)
}

// Close unmounts the filesystem and deletes its image. Anything still
// mounted below Dir must be unmounted first.
func (f *FS) Close() error {
	err := unix.Unmount(f.Dir, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(f.Dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", f.Dir, err)
	}
	if err := os.Remove(f.image); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove image %s: %w", f.image, err)
	}
	return nil
}
