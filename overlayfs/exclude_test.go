package overlayfs

import (
	"errors"
	"testing"
)

func TestExclude(t *testing.T) {
	tests := []struct {
		name  string
		globs []string
		path  string
		dir   bool
		want  bool
	}{
		{"name_any_depth", []string{"node_modules"}, "web/node_modules", true, true},
		{"name_glob", []string{"*.log"}, "a/b/debug.log", false, true},
		{"name_no_match", []string{"*.log"}, "a/b/debug.txt", false, false},
		{"anchored", []string{"build/out"}, "build/out", true, true},
		{"anchored_not_deeper", []string{"build/out"}, "x/build/out", true, false},
		{"leading_slash", []string{"/tmp"}, "tmp", true, true},
		{"leading_slash_not_deeper", []string{"/tmp"}, "a/tmp", true, false},
		{"double_star", []string{"**/testdata/big"}, "a/b/testdata/big", false, true},
		{"double_star_zero_dirs", []string{"**/testdata"}, "testdata", true, true},
		{"dir_only_skips_files", []string{"cache/"}, "cache", false, false},
		{"dir_only_matches_dirs", []string{"cache/"}, "x/cache", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ex, err := newExcluder(tt.globs)
			if err != nil {
				t.Fatal(err)
			}
			if got := ex.match(tt.path, tt.dir); got != tt.want {
				t.Errorf("match(%q) = %v, want %v", tt.path, got, tt.want)
			}
		})
	}
}

func TestExcludeInvalid(t *testing.T) {
	tests := []struct{ name, glob string }{
		{"open_bracket", "[abc"},
		{"empty", ""},
		{"only_slash", "/"},
		{"dotdot", "../x"},
		{"bad_escape", "a\\"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := newExcluder([]string{"ok", tt.glob}); !errors.Is(err, ErrBadPattern) {
				t.Errorf("newExcluder(%q) = %v, want ErrBadPattern", tt.glob, err)
			}
		})
	}
}

func TestMatchPathParents(t *testing.T) {
	ex, err := newExcluder([]string{"vendor/"})
	if err != nil {
		t.Fatal(err)
	}
	if !ex.matchPath("vendor/a/b.go") {
		t.Error("a file below an excluded directory must be excluded")
	}
	if ex.matchPath("src/vendor.go") {
		t.Error("vendor.go is not the vendor directory")
	}
}

func FuzzExclude(f *testing.F) {
	for _, s := range []string{"node_modules", "*.log", "/build/**/out", "[a-z]?", "cache/", "**"} {
		f.Add(s, "a/b/c")
	}
	f.Fuzz(func(t *testing.T, glob, path string) {
		ex, err := newExcluder([]string{glob})
		if err != nil {
			if !errors.Is(err, ErrBadPattern) {
				t.Fatalf("error %v is not ErrBadPattern", err)
			}
			return
		}
		ex.match(path, false)
		ex.match(path, true)
		ex.matchPath(path)
	})
}
