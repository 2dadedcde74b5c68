package overlayfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDiff runs one edit per case inside a fresh workspace and checks what
// Diff reports, in overlay and copy modes alike.
func TestDiff(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name string
		edit func(t *testing.T, ws string)
		want []Change
	}{
		{"nothing", func(t *testing.T, ws string) {}, nil},
		{"add_file_with_space_and_unicode", func(t *testing.T, ws string) {
			writeFile(t, ws, "new dir/ünï file.txt", "x\n", 0o644)
		}, []Change{{"new dir/ünï file.txt", Added}}},
		{"add_file_named_with_newline", func(t *testing.T, ws string) {
			writeFile(t, ws, "a\nb", "x\n", 0o644)
		}, []Change{{"a\nb", Added}}},
		{"modify", func(t *testing.T, ws string) {
			writeFile(t, ws, "lib/a.txt", "changed\n", 0o644)
		}, []Change{{"lib/a.txt", Modified}}},
		{"chmod_only", func(t *testing.T, ws string) {
			if err := os.Chmod(filepath.Join(ws, "lib/a.txt"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, []Change{{"lib/a.txt", Modified}}},
		{"rewrite_same_content_is_no_change", func(t *testing.T, ws string) {
			writeFile(t, ws, "lib/a.txt", "a\n", 0o644)
		}, nil},
		{"delete_file", func(t *testing.T, ws string) {
			if err := os.Remove(filepath.Join(ws, "top.txt")); err != nil {
				t.Fatal(err)
			}
		}, []Change{{"top.txt", Deleted}}},
		{"delete_directory", func(t *testing.T, ws string) {
			if err := os.RemoveAll(filepath.Join(ws, "lib")); err != nil {
				t.Fatal(err)
			}
		}, []Change{{"lib/a.txt", Deleted}, {"lib/b.txt", Deleted}, {"lib/sub/c.txt", Deleted}}},
		{"replace_directory_keeping_one_file", func(t *testing.T, ws string) {
			if err := os.RemoveAll(filepath.Join(ws, "lib")); err != nil {
				t.Fatal(err)
			}
			writeFile(t, ws, "lib/a.txt", "a\n", 0o644)
		}, []Change{{"lib/b.txt", Deleted}, {"lib/sub/c.txt", Deleted}}},
		{"directory_becomes_file", func(t *testing.T, ws string) {
			if err := os.RemoveAll(filepath.Join(ws, "lib/sub")); err != nil {
				t.Fatal(err)
			}
			writeFile(t, ws, "lib/sub", "now a file\n", 0o644)
		}, []Change{{"lib/sub", Added}, {"lib/sub/c.txt", Deleted}}},
		{"retarget_symlink", func(t *testing.T, ws string) {
			p := filepath.Join(ws, "link")
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("lib/b.txt", p); err != nil {
				t.Fatal(err)
			}
		}, []Change{{"link", Modified}}},
		{"new_empty_directory", func(t *testing.T, ws string) {
			if err := os.Mkdir(filepath.Join(ws, "void"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, []Change{{"void", Added}}},
		{"git_internals_are_not_listed", func(t *testing.T, ws string) {
			writeFile(t, ws, ".git/info/exclude", "*.tmp\n", 0o644)
		}, nil},
	}
	for _, mode := range []Mode{ModeOverlay, ModeCopy} {
		src := filepath.Join(t.TempDir(), "src")
		writeFile(t, src, "top.txt", "top\n", 0o644)
		writeFile(t, src, "lib/a.txt", "a\n", 0o644)
		writeFile(t, src, "lib/b.txt", "b\n", 0o644)
		writeFile(t, src, "lib/sub/c.txt", "c\n", 0o644)
		writeFile(t, src, ".git/info/exclude", "\n", 0o644)
		if err := os.Symlink("lib/a.txt", filepath.Join(src, "link")); err != nil {
			t.Fatal(err)
		}
		m := newTestManager(t, WithForceMode(mode))
		for i, tt := range tests {
			t.Run(string(mode)+"_"+tt.name, func(t *testing.T) {
				ctx := context.Background()
				id := fmt.Sprintf("d%d", i)
				ws, err := m.Create(ctx, id, src, CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Remove(context.Background(), id) })
				tt.edit(t, ws.Path)
				got, err := m.Diff(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Errorf("diff = %q, want %q", got, tt.want)
				}
				var p bytes.Buffer
				if err := m.Patch(ctx, id, &p); err != nil {
					t.Fatal(err)
				}
				if len(tt.want) == 0 && p.Len() != 0 {
					t.Errorf("patch of no change: %q", p.String())
				}
				for _, c := range tt.want {
					if c.Path != "void" && !strings.Contains(p.String(), "diff --git") {
						t.Errorf("patch lacks %s: %q", c.Path, p.String())
					}
				}
			})
		}
	}
}
