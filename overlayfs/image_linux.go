package overlayfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilo-dev/cilo/overlayfs/erofs"
)

// imageName is the EROFS image of a full overlay base, kept beside t/,
// where it is mounted.
const imageName = "image.erofs"

// imageEntries turns what a walk found into the entries of an image.
func imageEntries(w *walkResult) []erofs.Entry {
	out := make([]erofs.Entry, len(w.entries))
	for i, e := range w.entries {
		out[i] = erofs.Entry{Path: e.rel, Mode: e.st.Mode, UID: e.st.Uid, GID: e.st.Gid, Size: e.st.Size,
			MtimeSec: e.st.Mtim.Sec, MtimeNsec: uint32(e.st.Mtim.Nsec), Link: e.link}
	}
	return out
}

// buildImage makes base b an EROFS image of what the walk w of its source
// found, mounted at tmp/t. It reports false, leaving nothing in tmp, when
// the image cannot be mounted here: the caller then takes a directory
// snapshot, and no further image is tried by this Manager.
func (m *Manager) buildImage(ctx context.Context, b *baseMeta, w *walkResult, tmp string) (bool, error) {
	logSkipped(m.logf, b.Source, w)
	img := filepath.Join(tmp, imageName)
	st, err := erofs.Write(ctx, img, b.Source, imageEntries(w), erofs.Options{Reflink: true})
	if err != nil {
		return false, fmt.Errorf("snapshot %s: write erofs image %s: %w", b.Source, img, err)
	}
	dir := filepath.Join(tmp, "t")
	if err := os.Mkdir(dir, 0o755); err != nil {
		os.Remove(img)
		return false, fmt.Errorf("create %s: %w", dir, err)
	}
	if err := m.mountImg(img, dir); err != nil {
		m.noImage.Store(true)
		b.NoImage = err.Error()
		m.logf("base %s: %v: a directory snapshot instead", b.ID, err)
		os.Remove(dir)
		os.Remove(img)
		return false, nil
	}
	b.Image = imageName
	b.Reflink = st.Reflinked
	b.NoImage = ""
	return true, nil
}

// mountBase mounts the image at the bottom of base b's layer stack (the
// one full snapshot; thin layers are directories) unless it is mounted:
// after a reboot, the mount point is an empty directory. locked says the
// caller holds the root lock, under which mounts are made so that two
// processes never stack two mounts of one image.
func (m *Manager) mountBase(b *baseMeta, locked bool) error {
	bottom := b
	if id := b.Layers[len(b.Layers)-1]; id != b.ID {
		var err error
		if bottom, err = m.readBase(id); err != nil {
			return fmt.Errorf("base %s: %w", id, err)
		}
	}
	dir := m.layerDir(bottom.ID)
	if bottom.Image == "" || imageMounted(dir) {
		return nil
	}
	if !locked {
		unlock, err := m.lock()
		if err != nil {
			return err
		}
		defer unlock()
		if imageMounted(dir) {
			return nil
		}
	}
	if err := m.mountImg(filepath.Join(m.baseDir(bottom.ID), bottom.Image), dir); err != nil {
		return fmt.Errorf("base %s: %w", bottom.ID, err)
	}
	return nil
}
