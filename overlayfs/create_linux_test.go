package overlayfs

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// canReflink reports whether dir's filesystem clones files.
func canReflink(t *testing.T, dir string) bool {
	t.Helper()
	a, err := os.CreateTemp(dir, "reflink-probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(a.Name())
	defer a.Close()
	a.WriteString("probe")
	b, err := os.CreateTemp(dir, "reflink-probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(b.Name())
	defer b.Close()
	return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil
}

func TestCreateKeepsTree(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		force Mode
		want  Mode
	}{
		{"overlay", "", ModeOverlay},
		{"reflink_or_copy_as_the_filesystem_allows", ModeReflink, ""},
		{"copy", ModeCopy, ModeCopy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			src := filepath.Join(t.TempDir(), "src")
			skipped := richTree(t, src)
			var opts []Opt
			if tt.force != "" {
				opts = append(opts, WithForceMode(tt.force))
			}
			m := newTestManager(t, opts...)
			before := readTree(t, src, false)
			ws, err := m.Create(ctx, "keep", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if want == "" {
				want = ModeCopy
				if canReflink(t, filepath.Dir(m.root)) {
					want = ModeReflink
				}
			}
			if ws.Mode != want {
				t.Fatalf("mode = %s, want %s", ws.Mode, want)
			}
			got := readTree(t, ws.Path, false)
			for _, s := range skipped {
				if _, ok := got[s]; ok {
					t.Errorf("%s was copied; sockets and FIFOs must be skipped", s)
				}
				delete(before, s)
			}
			for rel, want := range before {
				g, ok := got[rel]
				if !ok {
					t.Errorf("%q missing from workspace", rel)
					continue
				}
				if rel == "." {
					want.mtime, g.mtime = 0, 0
				}
				if g != want {
					t.Errorf("%q: got %+v, want %+v", rel, g, want)
				}
			}
			for rel := range got {
				if _, ok := before[rel]; !ok {
					t.Errorf("%q in workspace but not in source", rel)
				}
			}
			var a, b unix.Stat_t
			if err := unix.Lstat(filepath.Join(ws.Path, "README.md"), &a); err != nil {
				t.Fatal(err)
			}
			if err := unix.Lstat(filepath.Join(ws.Path, "src/hardlink.md"), &b); err != nil {
				t.Fatal(err)
			}
			if a.Ino != b.Ino || a.Nlink != 2 {
				t.Errorf("hardlink not kept: inodes %d and %d, nlink %d", a.Ino, b.Ino, a.Nlink)
			}
			if after := readTree(t, src, false); len(after) != len(before)+len(skipped) {
				t.Errorf("source changed: %d entries, had %d", len(after), len(before)+len(skipped))
			}
			if err := m.Remove(ctx, "keep"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(ws.Path); !os.IsNotExist(err) {
				t.Errorf("workspace path still there after Remove: %v", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(m.root, dirBases)); len(ents) != 0 {
				t.Errorf("bases left after the last workspace went: %d", len(ents))
			}
		})
	}
}
