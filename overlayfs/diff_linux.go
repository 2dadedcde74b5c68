package overlayfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// lowerView is the read-only side of a workspace: the stack of base layers
// as overlay shows it, whiteouts applied.
type lowerView struct {
	layers []string // top first
}

// lookup finds rel in the stack: the layer path that provides it, or ok
// false when no layer has it or a higher layer deleted it.
func (v lowerView) lookup(rel string) (p string, st unix.Stat_t, ok bool) {
	parts := strings.Split(rel, "/")
	for _, l := range v.layers {
		opaque, missing := false, false
		for i := 1; i < len(parts); i++ {
			a := l + "/" + strings.Join(parts[:i], "/")
			var ast unix.Stat_t
			if err := unix.Lstat(a, &ast); err != nil {
				missing = true
				break
			}
			if ast.Mode&unix.S_IFMT != unix.S_IFDIR {
				// A whiteout or a file hides rel in every layer below.
				return "", st, false
			}
			if isOpaque(a) {
				opaque = true
			}
		}
		if !missing {
			p = l + "/" + rel
			if err := unix.Lstat(p, &st); err == nil {
				if isWhiteout(&st) {
					return "", st, false
				}
				return p, st, true
			}
		}
		if opaque {
			return "", st, false
		}
	}
	return "", st, false
}

// list returns the names in directory rel of the stack, whiteouts applied.
func (v lowerView) list(rel string) []string {
	seen := map[string]bool{}
	var names []string
	for _, l := range v.layers {
		d := join(l, rel)
		var st unix.Stat_t
		if err := unix.Lstat(d, &st); err != nil {
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			break
		}
		f, err := os.Open(d)
		if err != nil {
			continue
		}
		ns, _ := f.Readdirnames(-1)
		f.Close()
		for _, n := range ns {
			if seen[n] {
				continue
			}
			seen[n] = true
			var s unix.Stat_t
			if unix.Lstat(d+"/"+n, &s) == nil && isWhiteout(&s) {
				continue
			}
			names = append(names, n)
		}
		if rel != "" && isOpaque(d) {
			break
		}
	}
	sort.Strings(names)
	return names
}

// files lists every non-directory below rel in the stack (rel itself when
// it is not a directory); an empty directory lists as itself.
func (v lowerView) files(rel string) []string {
	_, st, ok := v.lookup(rel)
	if !ok {
		return nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return []string{rel}
	}
	var out []string
	for _, n := range v.list(rel) {
		out = append(out, v.files(join2(rel, n))...)
	}
	if len(out) == 0 {
		out = []string{rel}
	}
	return out
}

func join2(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

// hiddenInDiff: the workspace's .git is git's business. Commits made in the
// env reach the source through Merge, not through Diff.
func hiddenInDiff(rel string) bool {
	return rel == ".git" || strings.HasPrefix(rel, ".git/")
}

// change is a Change plus where its two sides live.
type change struct {
	Change
	old string // path of the old version, "" when added
	cur string // path of the new version, "" when deleted
}

// Diff lists what workspace id changed relative to its base, sorted by
// path. For an overlay workspace only the upper layer is read, so the cost
// follows the size of the change. Directories appear only when they are
// new and empty or were removed with nothing in them.
func (m *Manager) Diff(ctx context.Context, id string) ([]Change, error) {
	cs, err := m.changes(ctx, id)
	if err != nil {
		return nil, err
	}
	out := make([]Change, len(cs))
	for i, c := range cs {
		out[i] = c.Change
	}
	return out, nil
}

func (m *Manager) changes(ctx context.Context, id string) ([]change, error) {
	w, err := m.readWS(id)
	if err != nil {
		return nil, err
	}
	// The lower layers are read below: after a reboot, the image must be
	// mounted first, and must not be one the crash may have torn.
	b, err := m.stackOf(w)
	if err != nil {
		return nil, err
	}
	if err := m.mountBase(b, false); err != nil {
		return nil, fmt.Errorf("workspace %q: %w", id, err)
	}
	var cs []change
	if w.Mode == ModeOverlay {
		cs, err = diffUpper(ctx, w.Upper, lowerView{layers: w.Layers})
	} else {
		cs, err = diffTrees(ctx, w.Path, lowerView{layers: []string{m.layerDir(b.ID)}})
	}
	if err != nil {
		return nil, fmt.Errorf("diff workspace %q: %w", id, err)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Path < cs[j].Path })
	return cs, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ns, err := f.Readdirnames(-1)
	sort.Strings(ns)
	return ns, err
}

// diffUpper reads an overlay upper layer: whiteouts are deletions, opaque
// directories delete what was below them, files are additions or
// modifications depending on what the lower stack has.
func diffUpper(ctx context.Context, upper string, lower lowerView) ([]change, error) {
	var out []change
	var walk func(rel string) error
	walk = func(rel string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		names, err := readNames(join(upper, rel))
		if err != nil {
			return err
		}
		for _, n := range names {
			r := join2(rel, n)
			if hiddenInDiff(r) {
				continue
			}
			p := join(upper, r)
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			lp, lst, inLower := lower.lookup(r)
			lowerDir := inLower && lst.Mode&unix.S_IFMT == unix.S_IFDIR
			switch {
			case isWhiteout(&st):
				out = lower.deletions(out, r)
			case st.Mode&unix.S_IFMT == unix.S_IFDIR:
				if lowerDir && isOpaque(p) {
					for _, ln := range lower.list(r) {
						if exists(join(p, ln)) {
							continue
						}
						for _, f := range lower.files(join2(r, ln)) {
							lfp, _, _ := lower.lookup(f)
							out = append(out, change{Change{f, Deleted}, lfp, ""})
						}
					}
				}
				if inLower && !lowerDir {
					out = append(out, change{Change{r, Deleted}, lp, ""})
				}
				before := len(out)
				if err := walk(r); err != nil {
					return err
				}
				if !lowerDir && len(out) == before {
					out = append(out, change{Change{r, Added}, "", p})
				}
			default:
				switch {
				case !inLower:
					out = append(out, change{Change{r, Added}, "", p})
				case lowerDir:
					out = lower.deletions(out, r)
					out = append(out, change{Change{r, Added}, "", p})
				default:
					if out, err = modification(out, r, lp, &lst, p, &st); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	return out, walk("")
}

// diffTrees compares a copied workspace with its base, entry by entry.
func diffTrees(ctx context.Context, tree string, lower lowerView) ([]change, error) {
	var out []change
	var walk func(rel string) error
	walk = func(rel string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		cur, err := readNames(join(tree, rel))
		if err != nil {
			return err
		}
		names := uniq(append(cur, lower.list(rel)...))
		for _, n := range names {
			r := join2(rel, n)
			if hiddenInDiff(r) {
				continue
			}
			p := join(tree, r)
			var st unix.Stat_t
			inTree := unix.Lstat(p, &st) == nil
			lp, lst, inLower := lower.lookup(r)
			treeDir := inTree && st.Mode&unix.S_IFMT == unix.S_IFDIR
			lowerDir := inLower && lst.Mode&unix.S_IFMT == unix.S_IFDIR
			if inLower && (!inTree || treeDir != lowerDir) {
				out = lower.deletions(out, r)
				inLower, lowerDir = false, false
			}
			switch {
			case !inTree:
			case treeDir:
				before := len(out)
				if err := walk(r); err != nil {
					return err
				}
				if !lowerDir && len(out) == before {
					out = append(out, change{Change{r, Added}, "", p})
				}
			case !inLower:
				out = append(out, change{Change{r, Added}, "", p})
			default:
				if out, err = modification(out, r, lp, &lst, p, &st); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return out, walk("")
}

// deletions appends the deletion of every file of the lower layers at or
// under rel.
func (l lowerView) deletions(out []change, rel string) []change {
	for _, f := range l.files(rel) {
		lfp, _, _ := l.lookup(f)
		out = append(out, change{Change{f, Deleted}, lfp, ""})
	}
	return out
}

// modification appends rel as modified unless the lower entry a and the
// upper entry b are the same to a user (see sameEntry).
func modification(out []change, rel, a string, ast *unix.Stat_t, b string, bst *unix.Stat_t) ([]change, error) {
	same, err := sameEntry(rel, a, ast, b, bst)
	if err != nil || same {
		return out, err
	}
	return append(out, change{Change{rel, Modified}, a, b}), nil
}

// sameEntry reports whether two non-directories are the same to a user:
// type, permissions and content (symlink target). Equal size and mtime are
// taken as equal content, as git does; otherwise the bytes are compared, so
// a file opened for writing but left unchanged is not reported.
func sameEntry(rel, a string, ast *unix.Stat_t, b string, bst *unix.Stat_t) (bool, error) {
	if ast.Mode != bst.Mode {
		return false, nil
	}
	switch ast.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		ta, err1 := os.Readlink(a)
		tb, err2 := os.Readlink(b)
		if err := errors.Join(err1, err2); err != nil {
			return false, err
		}
		return ta == tb, nil
	case unix.S_IFREG:
		if ast.Size != bst.Size {
			return false, nil
		}
		if ast.Mtim == bst.Mtim {
			return true, nil
		}
		return sameContent(rel, a, b)
	}
	return ast.Rdev == bst.Rdev, nil
}

func sameContent(rel, a, b string) (bool, error) {
	fa, err := openBeneath(a, rel)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := openBeneath(b, rel)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba := make([]byte, 64<<10)
	bb := make([]byte, 64<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			return eb == io.EOF || eb == io.ErrUnexpectedEOF, nil
		}
		if ea != nil {
			return false, ea
		}
		if eb != nil {
			return false, eb
		}
	}
}

// openBeneath opens the regular file path, which is rel below some root,
// refusing to follow any symlink below that root. Diff runs as root over
// trees the env's user controls: a file swapped for a symlink to
// /etc/shadow between the walk and the read must not be read.
func openBeneath(path, rel string) (*os.File, error) {
	root, ok := strings.CutSuffix(path, "/"+rel)
	if !ok {
		return nil, fmt.Errorf("open %s: not below its root", path)
	}
	dfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open %s: not a regular file", path)
	}
	return f, nil
}
