package compose

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/continuity/fs"
	"github.com/opencontainers/image-spec/identity"
)

// ensureVolume makes the named volume's directory. A new volume is filled
// with what the image holds at the mount point, as Docker does, so that an
// image shipping data there (web roots, default configs) works unchanged;
// nocopy skips that.
func ensureVolume(ctx context.Context, c *containerd.Client, img containerd.Image, dir, target string, nocopy bool) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	// Filled beside, then renamed: an interrupted copy never passes for
	// a ready volume.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if !nocopy {
		if err := copyFromImage(ctx, c, img, target, tmp); err != nil {
			return fmt.Errorf("copy %s of image %s into the volume: %w", target, img.Name(), err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// copyFromImage copies the directory target of the image's root
// filesystem (read through a temporary view snapshot) into dst. A target
// the image does not have leaves dst empty.
func copyFromImage(ctx context.Context, c *containerd.Client, img containerd.Image, target, dst string) error {
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return err
	}
	sn := c.SnapshotService(snapshotter)
	key := execID("cilo-volume")
	mounts, err := sn.View(ctx, key, identity.ChainID(diffIDs).String())
	if err != nil {
		return fmt.Errorf("view image filesystem: %w", err)
	}
	defer sn.Remove(context.WithoutCancel(ctx), key)
	return mount.WithReadonlyTempMount(ctx, mounts, func(root string) error {
		src, err := fs.RootPath(root, target)
		if err != nil {
			return err
		}
		st, err := os.Stat(src)
		if errors.Is(err, os.ErrNotExist) || (err == nil && !st.IsDir()) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fs.CopyDir(dst, src); err != nil {
			return err
		}
		// The volume's root takes the mode and owner of the image's
		// directory, as Docker's copy-up does.
		if err := os.Chmod(dst, st.Mode()&(os.ModePerm|os.ModeSticky|os.ModeSetgid|os.ModeSetuid)); err != nil {
			return err
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			return os.Lchown(dst, int(sys.Uid), int(sys.Gid))
		}
		return nil
	})
}
