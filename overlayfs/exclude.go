package overlayfs

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// ErrBadPattern reports a workspace.exclude glob that cannot be parsed.
var ErrBadPattern = errors.New("invalid exclude pattern")

// excluder matches source-relative paths against workspace.exclude globs.
//
// The syntax follows .gitignore where it is cheap to: a pattern without a
// slash matches a name at any depth ("node_modules", "*.log"); a pattern with
// a slash is anchored at the source root ("build/out", "/tmp/*.o"); a "**"
// segment matches any number of directories ("**/testdata/big"); a trailing
// slash matches directories only. Everything below an excluded directory is
// excluded with it.
type excluder struct {
	pats []pattern
}

type pattern struct {
	segs     []string // anchored patterns: one glob per path segment
	name     string   // unanchored patterns: glob matched against the base name
	dirOnly  bool
	anchored bool
}

// newExcluder validates and compiles globs; an invalid glob fails the whole
// list so a typo never silently copies what the user meant to leave out.
func newExcluder(globs []string) (*excluder, error) {
	ex := &excluder{}
	for _, g := range globs {
		p, err := compilePattern(g)
		if err != nil {
			return nil, err
		}
		ex.pats = append(ex.pats, p)
	}
	return ex, nil
}

func compilePattern(g string) (pattern, error) {
	var p pattern
	s := strings.TrimSpace(g)
	if s == "" || strings.ContainsRune(s, 0) {
		return p, fmt.Errorf("exclude %q: %w: empty", g, ErrBadPattern)
	}
	if strings.HasSuffix(s, "/") {
		p.dirOnly = true
		s = strings.TrimRight(s, "/")
	}
	if strings.HasPrefix(s, "/") {
		p.anchored = true
		s = strings.TrimLeft(s, "/")
	}
	if s == "" {
		return p, fmt.Errorf("exclude %q: %w: matches the whole source", g, ErrBadPattern)
	}
	if strings.Contains(s, "/") {
		p.anchored = true
	}
	segs := strings.Split(s, "/")
	for _, seg := range segs {
		switch seg {
		case "", ".", "..":
			return p, fmt.Errorf("exclude %q: %w: segment %q", g, ErrBadPattern, seg)
		}
		if _, err := path.Match(seg, ""); err != nil {
			return p, fmt.Errorf("exclude %q: %w: %v", g, ErrBadPattern, err)
		}
	}
	if p.anchored {
		// "**/**" is "**": collapsing keeps matching polynomial.
		for _, seg := range segs {
			if seg == "**" && len(p.segs) > 0 && p.segs[len(p.segs)-1] == "**" {
				continue
			}
			p.segs = append(p.segs, seg)
		}
	} else {
		p.name = s
	}
	return p, nil
}

// match reports whether rel (slash separated, relative to the source root)
// is excluded. Parents are checked by the walker, which never descends into
// an excluded directory.
func (ex *excluder) match(rel string, isDir bool) bool {
	if ex == nil || rel == "" || rel == "." {
		return false
	}
	for _, p := range ex.pats {
		if p.dirOnly && !isDir {
			continue
		}
		if !p.anchored {
			if ok, _ := path.Match(p.name, path.Base(rel)); ok {
				return true
			}
			continue
		}
		if matchSegs(p.segs, strings.Split(rel, "/")) {
			return true
		}
	}
	return false
}

// matchPath reports whether rel or any of its parent directories is
// excluded, for paths that do not come from a walk (git status output).
func (ex *excluder) matchPath(rel string) bool {
	if ex == nil || len(ex.pats) == 0 {
		return false
	}
	parts := strings.Split(rel, "/")
	for i := 1; i <= len(parts); i++ {
		if ex.match(strings.Join(parts[:i], "/"), i < len(parts)) {
			return true
		}
	}
	return false
}

func matchSegs(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			rest := pat[1:]
			for i := 0; i <= len(name); i++ {
				if matchSegs(rest, name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], name[0]); !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}
