package overlayfs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// maxPatchFile is the largest file Patch shows line by line; bigger ones
// are reported like binary files.
const maxPatchFile = 8 << 20

// Patch writes the changes of workspace id as a unified diff in git's
// format (a/ and b/ prefixes, new/deleted file and mode lines), which
// `git apply` and `patch -p1` accept.
func (m *Manager) Patch(ctx context.Context, id string, w io.Writer) error {
	cs, err := m.changes(ctx, id)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeFilePatch(w, c); err != nil {
			return fmt.Errorf("patch of %s: %w", c.Path, err)
		}
	}
	return nil
}

// side is one version of a file in a patch.
type side struct {
	mode   uint32
	data   []byte
	binary bool
	dir    bool
}

func readSide(p, rel string) (side, error) {
	var s side
	if p == "" {
		return s, nil
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return s, err
	}
	s.mode = st.Mode
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		s.dir = true
	case unix.S_IFLNK:
		t, err := os.Readlink(p)
		if err != nil {
			return s, err
		}
		s.data = []byte(t)
	case unix.S_IFREG:
		if st.Size > maxPatchFile {
			s.binary = true
			return s, nil
		}
		f, err := openBeneath(p, rel)
		if err != nil {
			return s, err
		}
		b, err := io.ReadAll(io.LimitReader(f, maxPatchFile+1))
		f.Close()
		if err != nil {
			return s, err
		}
		s.data = b
		s.binary = bytes.IndexByte(b[:min(len(b), 8000)], 0) >= 0
	}
	return s, nil
}

// gitMode is the mode git prints: 100644, 100755, 120000.
func gitMode(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFLNK:
		return "120000"
	case unix.S_IFDIR:
		return "040000"
	}
	if m&0o111 != 0 {
		return "100755"
	}
	return "100644"
}

func writeFilePatch(w io.Writer, c change) error {
	old, err := readSide(c.old, c.Path)
	if err != nil {
		return err
	}
	cur, err := readSide(c.cur, c.Path)
	if err != nil {
		return err
	}
	if old.dir || cur.dir {
		return nil // empty directories have no patch form
	}
	a, b := quotePath("a/", c.Path), quotePath("b/", c.Path)
	var hdr strings.Builder
	fmt.Fprintf(&hdr, "diff --git %s %s\n", a, b)
	switch c.Kind {
	case Added:
		fmt.Fprintf(&hdr, "new file mode %s\n", gitMode(cur.mode))
		a = "/dev/null"
	case Deleted:
		fmt.Fprintf(&hdr, "deleted file mode %s\n", gitMode(old.mode))
		b = "/dev/null"
	default:
		if gitMode(old.mode) != gitMode(cur.mode) {
			fmt.Fprintf(&hdr, "old mode %s\nnew mode %s\n", gitMode(old.mode), gitMode(cur.mode))
		}
	}
	if old.binary || cur.binary {
		if c.Kind == Modified && !old.binary && !cur.binary {
			return nil
		}
		fmt.Fprintf(&hdr, "Binary files %s and %s differ\n", a, b)
		_, err := io.WriteString(w, hdr.String())
		return err
	}
	if bytes.Equal(old.data, cur.data) {
		if c.Kind == Modified {
			_, err := io.WriteString(w, hdr.String()) // mode change only
			return err
		}
		if len(cur.data) == 0 && len(old.data) == 0 {
			_, err := io.WriteString(w, hdr.String())
			return err
		}
	}
	fmt.Fprintf(&hdr, "--- %s\n+++ %s\n", a, b)
	if _, err := io.WriteString(w, hdr.String()); err != nil {
		return err
	}
	return unified(w, splitLines(old.data), splitLines(cur.data), 3)
}

// Merge fetches the commits of workspace id into its source repository as
// refs/heads/<branch> (the caller passes "cilo/<env>"), replacing an older
// fetch of the same branch. The source's working tree, index and current
// branch are never touched: git fetch writes refs and objects only, runs as
// the repository's owner, and refuses to update a checked-out branch.
func (m *Manager) Merge(ctx context.Context, id, branch string) error {
	ws, err := m.Ensure(ctx, id)
	if err != nil {
		return err
	}
	if !isGitSource(ws.Source) {
		return fmt.Errorf("merge workspace %q: source %s is not a git repository", id, ws.Source)
	}
	if err := fetchInto(ctx, ws.Source, ws.Path, branch); err != nil {
		return fmt.Errorf("merge workspace %q into %s: %w", id, ws.Source, err)
	}
	return nil
}
