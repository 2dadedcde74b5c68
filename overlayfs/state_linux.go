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
