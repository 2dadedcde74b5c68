package overlayfs

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestManifestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		man  manifest
	}{
		{"empty", manifest{}},
		{"root_only", manifest{{rel: "", s: stamp{Mode: 0o40755, Mtime: 1}}}},
		{"odd_names_and_negative_times", manifest{
			{rel: "", s: stamp{Mode: 0o40755}},
			{rel: "a b/ü\nx", s: stamp{Mode: 0o100644, Size: 1 << 40, Mtime: -5, Ctime: 7, Ino: 1<<63 + 3, UID: 1000, GID: 4294967295}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "manifest")
			if err := writeManifest(p, tt.man); err != nil {
				t.Fatal(err)
			}
			got, err := readManifest(p)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.man) || (len(got) > 0 && !reflect.DeepEqual(got, tt.man)) {
				t.Errorf("got %+v, want %+v", got, tt.man)
			}
		})
	}
}

func FuzzReadManifest(f *testing.F) {
	f.Add([]byte(manifestMagic + "\x01a\x80\x80\x04\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte(manifestMagic + "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "m")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		man, err := readManifest(p)
		if err != nil {
			return
		}
		// Whatever parses must survive a round trip.
		if err := writeManifest(p, man); err != nil {
			t.Fatal(err)
		}
		again, err := readManifest(p)
		if err != nil || len(again) != len(man) {
			t.Fatalf("round trip: %d entries, %v; had %d", len(again), err, len(man))
		}
	})
}

// TestUnchanged checks the fast path's question on each kind of change.
func TestUnchanged(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, dir string)
		want   bool
	}{
		{"nothing", func(t *testing.T, dir string) {}, true},
		{"read_only_access", func(t *testing.T, dir string) { readString(t, filepath.Join(dir, "a/f.txt")) }, true},
		{"same_size_edit", func(t *testing.T, dir string) { writeFile(t, dir, "a/f.txt", "HELLO\n", 0o644) }, false},
		{"edit_then_restore_mtime", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "a/f.txt")
			fi, _ := os.Stat(p)
			writeFile(t, dir, "a/f.txt", "HELLO\n", 0o644)
			os.Chtimes(p, fi.ModTime(), fi.ModTime())
		}, false},
		{"chmod", func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, "a/f.txt"), 0o600) }, false},
		{"new_untracked_file", func(t *testing.T, dir string) { writeFile(t, dir, "a/new.txt", "n\n", 0o644) }, false},
		{"delete", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "a/f.txt")) }, false},
		{"new_git_object", func(t *testing.T, dir string) { writeFile(t, dir, ".git/objects/ab/cdef", "obj", 0o444) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "a/f.txt", "hello\n", 0o644)
			writeFile(t, dir, ".git/objects/ab/0123", "obj", 0o444)
			w, err := walkTree(context.Background(), dir, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			man := manifestFromWalk(w)
			time.Sleep(10 * time.Millisecond) // let ctime move on coarse clocks
			tt.change(t, dir)
			if got := unchanged(context.Background(), dir, man); got != tt.want {
				t.Errorf("unchanged = %v, want %v", got, tt.want)
			}
		})
	}
}
