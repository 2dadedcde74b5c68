package overlayfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Source kinds: how a source state is fingerprinted.
const (
	kindGit  = "git"  // HEAD plus git status of dirty and untracked files
	kindTree = "tree" // every entry's metadata
)

// stamp is what a fingerprint remembers of one path: enough metadata that
// any edit, chmod, chown, rename or replacement changes it.
type stamp struct {
	Mode  uint32 `json:"m"`
	Size  int64  `json:"s,omitempty"`
	Mtime int64  `json:"t,omitempty"`
	Ctime int64  `json:"c,omitempty"`
	Ino   uint64 `json:"i,omitempty"`
	UID   uint32 `json:"u,omitempty"`
	GID   uint32 `json:"g,omitempty"`
}

// manifest maps slash-separated relative paths to stamps.
type manifest map[string]stamp

// immutableRel reports paths whose content never changes once written:
// git objects and packs are named by their content, so a name is enough and
// a walk of .git does not have to stat tens of thousands of loose objects.
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

// sourceState is one state of a source directory; equal states share one
// base snapshot.
type sourceState struct {
	Kind     string           `json:"kind"`
	Source   string           `json:"source"`
	Head     string           `json:"head,omitempty"`
	Branch   string           `json:"branch,omitempty"`
	Status   string           `json:"status,omitempty"` // hash of the git status records
	Dirty    map[string]stamp `json:"dirty,omitempty"`
	Key      string           `json:"key"`
	manifest manifest         // tree kind: the whole tree; git kind: computed on demand
}

// fingerprint computes the state of src. class separates bases that must not
// be shared (overlay bases may be thin, copy bases are always whole).
func fingerprint(ctx context.Context, src string, ex *excluder, excludes []string, class string) (*sourceState, error) {
	h := sha256.New()
	fmt.Fprintf(h, "cilo-base-v1\x00%s\x00%s\x00%q\x00", class, src, excludes)
	if isGitSource(src) {
		st, err := gitState(ctx, src, ex)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(h, "git\x00%s\x00%s\x00%s\x00", st.Head, st.Branch, st.Status)
		writeStamps(h, st.Dirty)
		st.Key = hex.EncodeToString(h.Sum(nil))
		return st, nil
	}
	man, err := walkManifest(ctx, src, "", ex)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(h, "tree\x00")
	writeStamps(h, man)
	return &sourceState{Kind: kindTree, Source: src, manifest: man, Key: hex.EncodeToString(h.Sum(nil))}, nil
}

func writeStamps(w interface{ Write([]byte) (int, error) }, m map[string]stamp) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s := m[k]
		fmt.Fprintf(w, "%s\x00%o %d %d %d %d %d %d\x00", k, s.Mode, s.Size, s.Mtime, s.Ctime, s.Ino, s.UID, s.GID)
	}
}

// isGitSource reports whether src is the top of a git working tree (a .git
// directory, or a .git file for worktrees and submodules) and git is
// installed to read it.
func isGitSource(src string) bool {
	if _, err := os.Lstat(src + "/.git"); err != nil {
		return false
	}
	_, err := exec.LookPath("git")
	return err == nil
}

// gitState reads HEAD, the branch and every dirty or untracked path with
// one git status. --no-optional-locks keeps git from refreshing the
// source's index: reading the source must never write to it.
func gitState(ctx context.Context, src string, ex *excluder) (*sourceState, error) {
	out, err := runGit(ctx, src, "--no-optional-locks", "status", "--porcelain=v2", "-z", "--branch",
		"--untracked-files=all", "--ignored=no", "--no-renames", "--ignore-submodules=none")
	if err != nil {
		return nil, err
	}
	st := &sourceState{Kind: kindGit, Source: src, Dirty: map[string]stamp{}}
	var records bytes.Buffer
	for _, rec := range bytes.Split(out, []byte{0}) {
		if len(rec) == 0 {
			continue
		}
		r := string(rec)
		var p string
		switch r[0] {
		case '#':
			if v, ok := strings.CutPrefix(r, "# branch.oid "); ok {
				st.Head = v
			} else if v, ok := strings.CutPrefix(r, "# branch.head "); ok {
				st.Branch = v
			}
			continue
		case '1':
			p = field(r, 8)
		case '2':
			p = field(r, 9)
		case 'u':
			p = field(r, 10)
		case '?', '!':
			p = r[2:]
		default:
			return nil, fmt.Errorf("git status in %s: unexpected record %q", src, r)
		}
		if p == "" || ex.matchPath(p) {
			continue
		}
		var s unix.Stat_t
		var stp stamp
		if err := unix.Lstat(src+"/"+p, &s); err == nil {
			stp = stampOf(p, &s)
		}
		st.Dirty[p] = stp
		// The record itself (staged or not, which modes and blobs) is part
		// of the state: a git add changes the index, not the file.
		records.Write(rec)
		records.WriteByte(0)
	}
	sum := sha256.Sum256(records.Bytes())
	st.Status = hex.EncodeToString(sum[:])
	if st.Head == "" {
		return nil, fmt.Errorf("git status in %s: no HEAD reported", src)
	}
	return st, nil
}

// field returns what follows the n-th space of a status record: the path,
// which may itself contain spaces.
func field(r string, n int) string {
	parts := strings.SplitN(r, " ", n+1)
	if len(parts) <= n {
		return ""
	}
	return parts[n]
}

// walkManifest stamps every entry below root/prefix. Entries of immutable
// directories are read by name only.
func walkManifest(ctx context.Context, root, prefix string, ex *excluder) (manifest, error) {
	man := manifest{}
	var walk func(rel string) error
	walk = func(rel string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		dir := join(root, rel)
		f, err := os.Open(dir)
		if err != nil {
			return fmt.Errorf("read directory %s: %w", dir, err)
		}
		ents, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("read directory %s: %w", dir, err)
		}
		for _, de := range ents {
			r := de.Name()
			if rel != "" {
				r = rel + "/" + r
			}
			isDir := de.IsDir()
			if ex.match(r, isDir) {
				continue
			}
			if immutableRel(r) && !isDir {
				man[r] = stamp{Mode: uint32(modeType(de.Type()))}
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(dir+"/"+de.Name(), &st); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return fmt.Errorf("stat %s: %w", dir+"/"+de.Name(), err)
			}
			man[r] = stampOf(r, &st)
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if err := walk(r); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if prefix != "" {
		var st unix.Stat_t
		if err := unix.Lstat(join(root, prefix), &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return man, nil
			}
			return nil, fmt.Errorf("stat %s: %w", join(root, prefix), err)
		}
		man[prefix] = stampOf(prefix, &st)
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return man, nil
		}
	}
	if err := walk(prefix); err != nil {
		return nil, err
	}
	return man, nil
}

func modeType(m os.FileMode) uint32 {
	switch {
	case m&os.ModeDir != 0:
		return unix.S_IFDIR
	case m&os.ModeSymlink != 0:
		return unix.S_IFLNK
	case m&os.ModeNamedPipe != 0:
		return unix.S_IFIFO
	case m&os.ModeSocket != 0:
		return unix.S_IFSOCK
	case m&os.ModeCharDevice != 0:
		return unix.S_IFCHR
	case m&os.ModeDevice != 0:
		return unix.S_IFBLK
	}
	return unix.S_IFREG
}

// manifestFromWalk turns the entries of a snapshot walk into a manifest,
// restricted to paths below prefix ("" for all).
func manifestFromWalk(w *walkResult, prefix string) manifest {
	man := manifest{}
	for _, e := range w.entries {
		if e.rel == "" {
			continue
		}
		if prefix != "" && e.rel != prefix && !strings.HasPrefix(e.rel, prefix+"/") {
			continue
		}
		man[e.rel] = stampOf(e.rel, &e.st)
	}
	return man
}

// changedPaths lists the paths whose stamps differ between two manifests.
func changedPaths(old, cur manifest) []string {
	var out []string
	for k, v := range cur {
		if o, ok := old[k]; !ok || o != v {
			out = append(out, k)
		}
	}
	for k := range old {
		if _, ok := cur[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}
