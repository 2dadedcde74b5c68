package overlayfs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnified(t *testing.T) {
	tests := []struct {
		name, a, b, want string
	}{
		{"one_line_changed", "a\nb\nc\n", "a\nB\nc\n", "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"},
		{"added_to_empty", "", "x\ny\n", "@@ -0,0 +1,2 @@\n+x\n+y\n"},
		{"all_deleted", "x\n", "", "@@ -1 +0,0 @@\n-x\n"},
		{"no_final_newline", "a\n", "a\nb", "@@ -1 +1,2 @@\n a\n+b\n\\ No newline at end of file\n"},
		{"two_hunks", "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n", "1\nX\n3\n4\n5\n6\n7\n8\n9\n10\nY\n12\n",
			"@@ -1,5 +1,5 @@\n 1\n-2\n+X\n 3\n 4\n 5\n@@ -8,5 +8,5 @@\n 8\n 9\n 10\n-11\n+Y\n 12\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := unified(&b, splitLines([]byte(tt.a)), splitLines([]byte(tt.b)), 3); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tt.want)
			}
		})
	}
}

// TestPatchApplies checks the unified output against patch(1)'s reading
// of it when patch is installed, and against our own edit script always.
func TestPatchApplies(t *testing.T) {
	a := "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(1)\n}\n"
	b := "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\tfmt.Println(2)\n\tos.Exit(0)\n}\n"
	var p bytes.Buffer
	p.WriteString("--- a/f\n+++ b/f\n")
	if err := unified(&p, splitLines([]byte(a)), splitLines([]byte(b)), 3); err != nil {
		t.Fatal(err)
	}
	bin, err := exec.LookPath("patch")
	if err != nil {
		t.Logf("patch(1) not installed: checked the edit script only")
		checkScript(t, a, b)
		return
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte(a), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p1", "-s")
	cmd.Dir = dir
	cmd.Stdin = &p
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("patch: %v: %s\n%s", err, out, p.String())
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "f")); string(got) != b {
		t.Errorf("patched file = %q, want %q", got, b)
	}
}

func checkScript(t *testing.T, a, b string) {
	t.Helper()
	var gotA, gotB strings.Builder
	for _, o := range editScript(splitLines([]byte(a)), splitLines([]byte(b))) {
		if o.kind != '+' {
			gotA.WriteString(o.line)
		}
		if o.kind != '-' {
			gotB.WriteString(o.line)
		}
	}
	if gotA.String() != a || gotB.String() != b {
		t.Fatalf("edit script does not rebuild its inputs: %q -> %q", a, b)
	}
}

func FuzzEditScript(f *testing.F) {
	f.Add("a\nb\nc\n", "a\nB\nc\n")
	f.Add("", "x")
	f.Add("1\n2\n3\n4\n", "4\n3\n2\n1\n")
	f.Fuzz(func(t *testing.T, a, b string) {
		checkScript(t, a, b)
	})
}

func TestQuotePath(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "a b.txt", "a/a b.txt"},
		{"unicode_kept", "ü/文件", "a/ü/文件"},
		{"newline_quoted", "new\nline", `"a/new\nline"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quotePath("a/", tt.in); got != tt.want {
				t.Errorf("quotePath(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}
