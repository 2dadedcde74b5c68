package mounted

import (
	"path/filepath"

	"golang.org/x/sys/unix"
)

const overlaySuperMagic = 0x794c7630

// InPlace reports whether the workspace at path, made in mode, can be used
// as it is: a copy always, an overlay once it is mounted
// (overlayfs.Manager.Ensure mounts it). It reads no metadata.
func InPlace(path, mode string) bool {
	return mode != OverlayMode || Overlay(path)
}

// Overlay reports whether an overlay is mounted at dir: dir is an overlay
// and on another device than its parent (so a root that itself lives on
// an overlay is not mistaken for a mount).
func Overlay(dir string) bool {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type != overlaySuperMagic {
		return false
	}
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
