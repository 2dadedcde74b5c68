package overlayfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilo-dev/cilo/overlayfs/loopfs"
)

// xfsDir mounts a fresh reflink-capable XFS image for the test.
func xfsDir(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("mkfs.xfs not installed (apt-get install xfsprogs)")
	}
	dir := t.TempDir()
	mnt := filepath.Join(dir, "xfs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	fs, err := loopfs.Mount(context.Background(), filepath.Join(dir, "xfs.img"), 512<<20, "xfs",
		[]string{"-q", "-m", "reflink=1"}, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fs.Close(); err != nil {
			t.Error(err)
		}
	})
	return mnt
}

// sharedExtents reports whether filefrag sees file's extents as shared
// with another file, which is what a reflink is.
func sharedExtents(t *testing.T, file string) bool {
	t.Helper()
	out, err := exec.Command("filefrag", "-v", file).CombinedOutput()
	if err != nil {
		t.Fatalf("filefrag %s: %v: %s", file, err, out)
	}
	return strings.Contains(string(out), "shared")
}

// TestReflinkOnXFS proves the reflink path on a real reflink filesystem: the
// base snapshot (an overlay base's EROFS image) and a reflink-mode
// workspace share their data extents with the source instead of copying
// them.
func TestReflinkOnXFS(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		force Mode
		want  Mode
		image bool                                                // the base is an image
		file  func(m *Manager, ws *Workspace, b *baseMeta) string // a snapshot file to check
	}{
		{"overlay_base_image_is_reflinked", "", ModeOverlay, true, func(m *Manager, ws *Workspace, b *baseMeta) string {
			return filepath.Join(m.baseDir(b.ID), b.Image)
		}},
		{"reflink_workspace", ModeReflink, ModeReflink, false, func(m *Manager, ws *Workspace, b *baseMeta) string {
			return filepath.Join(ws.Path, "data.bin")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			mnt := xfsDir(t)
			src := filepath.Join(mnt, "src")
			data := make([]byte, 8<<20)
			for i := range data {
				data[i] = byte(i)
			}
			writeFile(t, src, "data.bin", string(data), 0o644)
			writeFile(t, src, "small.txt", "small\n", 0o644)
			if sharedExtents(t, filepath.Join(src, "data.bin")) {
				t.Fatal("source file shares extents before any snapshot")
			}
			var opts []Opt
			if tt.force != "" {
				opts = append(opts, WithForceMode(tt.force))
			}
			m, err := New(filepath.Join(mnt, "root"), append(opts, WithLogf(t.Logf))...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cleanupManager(t, m) })
			ws, err := m.Create(ctx, "rl", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if ws.Mode != tt.want {
				t.Errorf("mode = %s, want %s", ws.Mode, tt.want)
			}
			b, err := m.readBase(filepath.Base(filepath.Dir(m.layerDir(mustWS(t, m, "rl").Base))))
			if err != nil {
				t.Fatal(err)
			}
			if !b.Reflink {
				t.Error("base was not reflinked on XFS")
			}
			if got := b.Image != ""; got != tt.image {
				t.Errorf("base image %q, want an image: %v", b.Image, tt.image)
			}
			f := tt.file(m, ws, b)
			if !sharedExtents(t, f) {
				out, _ := exec.Command("filefrag", "-v", f).CombinedOutput()
				t.Errorf("%s does not share extents:\n%s", f, out)
			}
			if !sharedExtents(t, filepath.Join(src, "data.bin")) {
				t.Error("source file's extents are not shared after the snapshot")
			}
			if got := readString(t, filepath.Join(ws.Path, "data.bin")); got != string(data) {
				t.Error("reflinked content differs")
			}
		})
	}
}

func mustWS(t *testing.T, m *Manager, id string) *wsMeta {
	t.Helper()
	w, err := m.readWS(id)
	if err != nil {
		t.Fatal(err)
	}
	return w
}
