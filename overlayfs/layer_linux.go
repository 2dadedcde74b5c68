package overlayfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"

	"golang.org/x/sys/unix"
)

// buildLayer makes an overlay layer at dst holding the current version of
// each of paths from src: files and symlinks copied, directories made, and a
// whiteout for what src no longer has. Stacked on the previous base it shows
// src as it is now. It returns the number of entries written.
func buildLayer(ctx context.Context, src, dst string, paths []string, ex *excluder, logf func(string, ...any)) (int, error) {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return 0, fmt.Errorf("create layer %s: %w", dst, err)
	}
	c := newCopier(src, dst, true)
	made := map[string]*unix.Stat_t{} // directories made, to finish last
	var rootSt unix.Stat_t
	if err := unix.Lstat(src, &rootSt); err != nil {
		return 0, fmt.Errorf("stat %s: %w", src, err)
	}
	made[""] = &rootSt
	// mkdirs makes the parents of rel in the layer with the source's modes.
	var mkdirs func(rel string) error
	mkdirs = func(rel string) error {
		if _, ok := made[rel]; ok {
			return nil
		}
		if err := mkdirs(parentRel(rel)); err != nil {
			return err
		}
		st := new(unix.Stat_t)
		if err := unix.Lstat(join(src, rel), st); err != nil {
			return fmt.Errorf("stat %s: %w", join(src, rel), err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%s: changed while the layer was built", join(src, rel))
		}
		if err := unix.Mkdir(join(dst, rel), 0o700); err != nil {
			return fmt.Errorf("create directory %s: %w", join(dst, rel), err)
		}
		made[rel] = st
		return nil
	}
	n := 0
	whited := map[string]bool{}
	sort.Strings(paths)
	for _, rel := range paths {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if ex.matchPath(rel) {
			continue
		}
		var st unix.Stat_t
		err := unix.Lstat(join(src, rel), &st)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			// Gone: hide the highest ancestor that is gone too.
			top := rel
			for p := parentRel(top); p != "" && !exists(join(src, p)); p = parentRel(p) {
				top = p
			}
			if whited[top] || !isDirPath(join(src, parentRel(top))) {
				continue // a file now stands where the directory was: it hides it
			}
			whited[top] = true
			if err := mkdirs(parentRel(top)); err != nil {
				return 0, err
			}
			if err := makeWhiteout(join(dst, top)); err != nil {
				return 0, err
			}
			n++
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("stat %s: %w", join(src, rel), err)
		}
		if err := mkdirs(parentRel(rel)); err != nil {
			return 0, err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := mkdirs(rel); err != nil {
				return 0, err
			}
		case unix.S_IFREG, unix.S_IFLNK:
			if _, err := os.Lstat(join(dst, rel)); err == nil {
				continue // listed twice
			}
			if err := c.copyEntry(&entry{rel: rel, st: st}); err != nil {
				return 0, err
			}
		default:
			logf("layer %s: skipping %q: sockets, FIFOs and devices are not copied", src, rel)
			continue
		}
		n++
	}
	rels := make([]string, 0, len(made))
	for r := range made {
		rels = append(rels, r)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(rels)))
	for _, r := range rels {
		if err := setMeta(join(dst, r), made[r], false, c.asRoot); err != nil {
			return 0, err
		}
	}
	return n, nil
}

func parentRel(rel string) string {
	p := path.Dir(rel)
	if p == "." || p == "/" {
		return ""
	}
	return p
}

func isDirPath(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

func exists(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil
}
