package overlayfs

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// stamp is what a source state remembers of one path: enough metadata that
// any edit, chmod, chown, rename or replacement changes it. ctime is the
// key: no user can set it back, so a changed file never passes for an
// unchanged one, whatever its mtime says.
type stamp struct {
	Mode  uint32
	Size  int64
	Mtime int64
	Ctime int64
	Ino   uint64
	UID   uint32
	GID   uint32
}

// immutableRel reports paths whose content never changes once written:
// git objects and packs are named by their content, so their name is all
// a state needs, and checking a state does not stat thousands of loose
// objects (their directory's stamp shows objects coming and going).
func immutableRel(rel string) bool {
	return strings.HasPrefix(rel, ".git/objects/")
}

func stampOf(rel string, st *unix.Stat_t) stamp {
	if immutableRel(rel) && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return stamp{Mode: st.Mode & unix.S_IFMT}
	}
	return stamp{
		Mode:  st.Mode,
		Size:  st.Size,
		Mtime: st.Mtim.Nano(),
		Ctime: st.Ctim.Nano(),
		Ino:   st.Ino,
		UID:   st.Uid,
		GID:   st.Gid,
	}
}

// mentry is one path of a manifest.
type mentry struct {
	rel string // "" is the root
	s   stamp
}

// manifest is the state of a source tree: every path below it (excluded
// paths and special files left out) with its stamp, parents before
// children. For a git repository this covers HEAD and the index (files in
// .git), dirty and untracked files, and ignored files too.
type manifest []mentry

func manifestFromWalk(w *walkResult) manifest {
	man := make(manifest, 0, len(w.entries))
	for _, e := range w.entries {
		man = append(man, mentry{rel: e.rel, s: stampOf(e.rel, &e.st)})
	}
	return man
}

// key names a state: equal keys, equal trees. class separates bases that
// must not be shared (overlay bases may be thin, copy bases never are).
func (man manifest) key(class, src string, excludes []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "cilo-base-v2\x00%s\x00%s\x00%q\x00", class, src, excludes)
	var b [64]byte
	for _, e := range man {
		h.Write([]byte(e.rel))
		n := putStamp(b[:0], e.s)
		h.Write(n)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func putStamp(b []byte, s stamp) []byte {
	b = binary.AppendUvarint(b, uint64(s.Mode))
	b = binary.AppendVarint(b, s.Size)
	b = binary.AppendVarint(b, s.Mtime)
	b = binary.AppendVarint(b, s.Ctime)
	b = binary.AppendUvarint(b, s.Ino)
	b = binary.AppendUvarint(b, uint64(s.UID))
	return binary.AppendUvarint(b, uint64(s.GID))
}

// A manifest file is the magic line, then per entry: uvarint length, the
// path, the stamp as varints. Compact and quick to load: the check that a
// source is unchanged reads it on every Create.
const manifestMagic = "cilo-manifest-v1\n"

func writeManifest(path string, man manifest) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	w := bufio.NewWriterSize(f, 256<<10)
	w.WriteString(manifestMagic)
	var b []byte
	for _, e := range man {
		b = binary.AppendUvarint(b[:0], uint64(len(e.rel)))
		b = append(b, e.rel...)
		b = putStamp(b, e.s)
		w.Write(b)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

func readManifest(path string) (manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// Paths are substrings of one string: no allocation per entry.
	buf, ok := strings.CutPrefix(string(data), manifestMagic)
	if !ok {
		return nil, fmt.Errorf("manifest %s: bad header", path)
	}
	man := make(manifest, 0, len(buf)/48)
	var r manifestReader
	r.buf = buf
	for len(r.buf) > 0 && r.err == nil {
		l := r.uvarint()
		if r.err != nil || l > uint64(len(r.buf)) {
			return nil, fmt.Errorf("manifest %s: truncated", path)
		}
		e := mentry{rel: r.buf[:l]}
		r.buf = r.buf[l:]
		e.s.Mode = uint32(r.uvarint())
		e.s.Size = r.varint()
		e.s.Mtime = r.varint()
		e.s.Ctime = r.varint()
		e.s.Ino = r.uvarint()
		e.s.UID = uint32(r.uvarint())
		e.s.GID = uint32(r.uvarint())
		man = append(man, e)
	}
	if r.err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, r.err)
	}
	return man, nil
}

type manifestReader struct {
	buf string
	err error
}

func (r *manifestReader) uvarint() uint64 {
	var x uint64
	var s uint
	for i := 0; i < len(r.buf) && i < binary.MaxVarintLen64; i++ {
		b := r.buf[i]
		if b < 0x80 {
			r.buf = r.buf[i+1:]
			return x | uint64(b)<<s
		}
		x |= uint64(b&0x7f) << s
		s += 7
	}
	r.err = errTruncated
	r.buf = ""
	return 0
}

func (r *manifestReader) varint() int64 {
	ux := r.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

var errTruncated = errors.New("truncated")

// unchanged reports whether src still matches man: every recorded path has
// the same stamp. Directories' stamps change when entries appear,
// disappear or are renamed in them, so new paths are caught too. Workers
// stat in parallel and stop at the first difference.
func unchanged(ctx context.Context, src string, man manifest) bool {
	dirfd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_PATH, 0)
	if err != nil {
		return false
	}
	defer unix.Close(dirfd)
	var (
		diff atomic.Bool
		next atomic.Int64
		wg   sync.WaitGroup
	)
	const chunk = 256
	workers := 2 * runtime.NumCPU()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st unix.Stat_t
			for !diff.Load() && ctx.Err() == nil {
				lo := int(next.Add(chunk)) - chunk
				if lo >= len(man) {
					return
				}
				for _, e := range man[lo:min(lo+chunk, len(man))] {
					if e.s.Mode&unix.S_IFMT != unix.S_IFDIR && immutableRel(e.rel) {
						continue
					}
					rel := e.rel
					if rel == "" {
						rel = "."
					}
					if unix.Fstatat(dirfd, rel, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || stampOf(e.rel, &st) != e.s {
						diff.Store(true)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	return !diff.Load() && ctx.Err() == nil
}

// manifestLess orders paths as a walk lists them: parents before children,
// siblings by name. That is byte order with "/" below every other byte, so
// "a/z" (inside a) comes before its sibling "a.c".
func manifestLess(a, b string) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if ca == '/' {
			return true
		}
		if cb == '/' {
			return false
		}
		return ca < cb
	}
	return len(a) < len(b)
}

// search returns the index of rel in man, or where it would go.
func (man manifest) search(rel string) int {
	return sort.Search(len(man), func(i int) bool { return !manifestLess(man[i].rel, rel) })
}

// pathChange is one path a watcher saw change. Tree marks a directory
// that appeared (made, or moved in) since: everything below it is new.
type pathChange struct {
	Rel  string
	Tree bool
}

// patchManifest brings old, the manifest of src when a watcher last
// vouched for it, up to date with the paths the watcher saw change since:
// each is stat'ed again, a directory that is new or replaced is walked,
// and a path that is gone takes everything below it along. Every other
// path is as old says, so the result is what a walk of src would give, at
// the cost of the change rather than of the tree.
func patchManifest(ctx context.Context, src string, old manifest, changed []pathChange, ex *excluder) (manifest, error) {
	dirfd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", src, err)
	}
	defer unix.Close(dirfd)
	sort.Slice(changed, func(i, j int) bool { return manifestLess(changed[i].Rel, changed[j].Rel) })
	drop := make([]bool, len(old))
	// dropAt drops rel and, with tree, everything below it: one run of
	// old, since old is in walk order.
	dropAt := func(rel string, tree bool) {
		for i := old.search(rel); i < len(old) && (old[i].rel == rel || tree && isBelow(old[i].rel, rel)); i++ {
			drop[i] = true
		}
	}
	var add manifest
	walked := ""
	for _, c := range changed {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if walked != "" && isBelow(c.Rel, walked) {
			continue // already in the walk of a new directory
		}
		i := old.search(c.Rel)
		wasDir := i < len(old) && old[i].rel == c.Rel && old[i].s.Mode&unix.S_IFMT == unix.S_IFDIR
		name := c.Rel
		if name == "" {
			name = "."
		}
		var st unix.Stat_t
		err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			dropAt(c.Rel, true)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", join(src, c.Rel), err)
		}
		typ := st.Mode & unix.S_IFMT
		switch {
		case typ != unix.S_IFDIR && typ != unix.S_IFREG && typ != unix.S_IFLNK, ex.match(c.Rel, typ == unix.S_IFDIR):
			dropAt(c.Rel, true) // not part of any state
		case typ == unix.S_IFDIR && (c.Tree || !wasDir):
			dropAt(c.Rel, true)
			w, err := walkFrom(ctx, src, c.Rel, ex, nil)
			if err != nil {
				return nil, err
			}
			for _, e := range w.entries {
				add = append(add, mentry{rel: e.rel, s: stampOf(e.rel, &e.st)})
			}
			walked = c.Rel
		default:
			// A file where a directory was takes the directory's entries along.
			dropAt(c.Rel, typ != unix.S_IFDIR)
			add = append(add, mentry{rel: c.Rel, s: stampOf(c.Rel, &st)})
		}
	}
	sort.Slice(add, func(i, j int) bool { return manifestLess(add[i].rel, add[j].rel) })
	out := make(manifest, 0, len(old)+len(add))
	for i, e := range old {
		if drop[i] {
			continue
		}
		for len(add) > 0 && manifestLess(add[0].rel, e.rel) {
			out = append(out, add[0])
			add = add[1:]
		}
		out = append(out, e)
	}
	return append(out, add...), nil
}

// isBelow reports whether rel is inside directory dir ("" is the root).
func isBelow(rel, dir string) bool {
	if dir == "" {
		return rel != ""
	}
	return len(rel) > len(dir) && rel[len(dir)] == '/' && rel[:len(dir)] == dir
}

// changedPaths lists the paths whose stamps differ between two manifests,
// including paths only one of them has.
func changedPaths(old, cur manifest) []string {
	om := make(map[string]stamp, len(old))
	for _, e := range old {
		om[e.rel] = e.s
	}
	var out []string
	for _, e := range cur {
		if s, ok := om[e.rel]; !ok || s != e.s {
			out = append(out, e.rel)
		}
		delete(om, e.rel)
	}
	for rel := range om {
		out = append(out, rel)
	}
	return out
}

// isGitSource reports whether src is the top of a git working tree (a .git
// directory, or a .git file for worktrees and submodules) and git is
// installed to work with it.
func isGitSource(src string) bool {
	if _, err := os.Lstat(src + "/.git"); err != nil {
		return false
	}
	_, err := exec.LookPath("git")
	return err == nil
}
