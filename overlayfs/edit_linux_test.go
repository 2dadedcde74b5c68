package overlayfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cilo-dev/cilo/overlayfs/mounted"
)

// TestEditWhileMounted: editing the source never reaches mounted envs, and
// the next env sees the edit through a thin layer, not a new snapshot.
func TestEditWhileMounted(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name   string
		source func(t *testing.T) string
	}{
		{"git", gitSource},
		{"plain_tree", func(t *testing.T) string {
			src := filepath.Join(t.TempDir(), "plain")
			writeFile(t, src, "README.md", "hello\n", 0o644)
			writeFile(t, src, "main.go", "package main\n", 0o644)
			writeFile(t, src, "docs/guide.md", "one\n", 0o644)
			return src
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			src := tt.source(t)
			m := newTestManager(t)
			a, err := m.Create(ctx, "a", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := m.Create(ctx, "b", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(a.Layers) != fmt.Sprint(b.Layers) {
				t.Fatalf("two envs of one state use different bases: %v, %v", a.Layers, b.Layers)
			}
			writeFile(t, src, "README.md", "edited\n", 0o644)
			writeFile(t, src, "new/file.txt", "new\n", 0o644)
			if err := os.RemoveAll(filepath.Join(src, "docs")); err != nil {
				t.Fatal(err)
			}
			for _, ws := range []*Workspace{a, b} {
				if got := readString(t, filepath.Join(ws.Path, "README.md")); got != "hello\n" {
					t.Errorf("env %s sees the source edit: %q", ws.ID, got)
				}
				if _, err := os.Stat(filepath.Join(ws.Path, "new/file.txt")); !os.IsNotExist(err) {
					t.Errorf("env %s sees a file added to the source: %v", ws.ID, err)
				}
				if _, err := os.Stat(filepath.Join(ws.Path, "docs/guide.md")); err != nil {
					t.Errorf("env %s lost a file deleted from the source: %v", ws.ID, err)
				}
			}
			c, err := m.Create(ctx, "c", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := readString(t, filepath.Join(c.Path, "README.md")); got != "edited\n" {
				t.Errorf("third env misses the edit: %q", got)
			}
			if got := readString(t, filepath.Join(c.Path, "new/file.txt")); got != "new\n" {
				t.Errorf("third env misses the new file: %q", got)
			}
			if _, err := os.Stat(filepath.Join(c.Path, "docs")); !os.IsNotExist(err) {
				t.Errorf("third env still has the deleted directory: %v", err)
			}
			if len(c.Layers) != 2 || c.Layers[1] != a.Layers[0] {
				t.Errorf("third env layers = %v, want a thin layer over %v", c.Layers, a.Layers)
			}
			changes, err := m.Diff(ctx, "c")
			if err != nil || len(changes) != 0 {
				t.Errorf("fresh env diff = %v, %v; want nothing", changes, err)
			}
			// Destroying the old envs keeps the layer the new one stacks on.
			for _, id := range []string{"a", "b"} {
				if err := m.Remove(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := os.Stat(c.Layers[1]); err != nil {
				t.Errorf("lower layer of a live env was collected: %v", err)
			}
			if err := m.Remove(ctx, "c"); err != nil {
				t.Fatal(err)
			}
			if ents, _ := os.ReadDir(filepath.Join(m.root, dirBases)); len(ents) != 0 {
				t.Errorf("%d bases left after the last env went", len(ents))
			}
		})
	}
}

// TestConcurrentCreate: 20 creates of one source state at once share one
// base and all work.
func TestConcurrentCreate(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	src := gitSource(t)
	root := filepath.Join(t.TempDir(), "root")
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	wss := make([]*Workspace, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A Manager per goroutine, as separate cilo processes would have.
			m, err := New(root, WithLogf(t.Logf))
			if err != nil {
				errs[i] = err
				return
			}
			wss[i], errs[i] = m.Create(ctx, fmt.Sprintf("env-%d", i), src, CreateOptions{})
		}()
	}
	wg.Wait()
	m, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanupManager(t, m) })
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		if got := readString(t, filepath.Join(wss[i].Path, "README.md")); got != "hello\n" {
			t.Errorf("env %d README = %q", i, got)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, dirBases)); len(ents) != 1 {
		t.Errorf("%d bases for one source state, want 1", len(ents))
	}
	if _, err := m.Create(ctx, "env-0", src, CreateOptions{}); err == nil {
		t.Error("creating an existing id succeeded")
	}
}

// TestEnsureRemounts: after an unmount (as after a reboot) Ensure brings the
// workspace back with its changes.
func TestEnsureRemounts(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	src := gitSource(t)
	m := newTestManager(t)
	ws, err := m.Create(ctx, "re", src, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, ws.Path, "mine.txt", "kept\n", 0o644)
	if err := m.Unmount(ctx, "re"); err != nil {
		t.Fatal(err)
	}
	if mounted.Overlay(ws.Path) {
		t.Fatal("still mounted after Unmount")
	}
	if _, err := m.Ensure(ctx, "re"); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(ws.Path, "mine.txt")); got != "kept\n" {
		t.Errorf("change lost across remount: %q", got)
	}
	if _, err := m.Ensure(ctx, "re"); err != nil {
		t.Fatalf("Ensure on a mounted workspace: %v", err)
	}
	if _, err := m.Get(ctx, "nope"); !errorsIsNotFound(err) {
		t.Errorf("Get of a missing workspace = %v, want ErrNotFound", err)
	}
	if err := m.Remove(ctx, "re"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, "re"); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

// TestRootInsideSource: a workspace root kept inside the source tree is
// not snapshotted into itself.
func TestRootInsideSource(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	src := gitSource(t)
	m, err := New(filepath.Join(src, ".cilo", "workspaces"), WithLogf(t.Logf))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanupManager(t, m) })
	ws, err := m.Create(ctx, "inside", src, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ws.Path, ".cilo", "workspaces")); !os.IsNotExist(err) {
		t.Errorf("the workspace root was copied into the workspace: %v", err)
	}
	if _, err := m.Create(ctx, "inside-2", src, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(m.root, dirBases)); len(ents) != 1 {
		t.Errorf("%d bases: the root's own changes made the source look changed", len(ents))
	}
}

// TestExcludeNeverCopied: workspace.exclude globs keep paths out of the
// base and out of later thin layers.
func TestExcludeNeverCopied(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	src := gitSource(t)
	writeFile(t, src, "node_modules/pkg/index.js", "big\n", 0o644)
	writeFile(t, src, "logs/app.log", "log\n", 0o644)
	m := newTestManager(t)
	o := CreateOptions{Exclude: []string{"node_modules/", "*.log"}}
	a, err := m.Create(ctx, "ex-a", src, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"node_modules", "logs/app.log"} {
		if _, err := os.Lstat(filepath.Join(a.Path, p)); !os.IsNotExist(err) {
			t.Errorf("%s copied despite the exclude: %v", p, err)
		}
	}
	// Changing only excluded paths is no new state.
	writeFile(t, src, "logs/other.log", "more\n", 0o644)
	writeFile(t, src, "node_modules/pkg/index.js", "changed\n", 0o644)
	writeFile(t, src, "main.go", "package main // edited\n", 0o644)
	b, err := m.Create(ctx, "ex-b", src, o)
	if err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(b.Path, "main.go")); got != "package main // edited\n" {
		t.Errorf("edit missing: %q", got)
	}
	for _, p := range []string{"node_modules", "logs/other.log"} {
		if _, err := os.Lstat(filepath.Join(b.Path, p)); !os.IsNotExist(err) {
			t.Errorf("%s reached a thin layer despite the exclude: %v", p, err)
		}
	}
}

// TestChurn creates and removes envs from several processes' worth of
// Managers while the source keeps changing: thin layers, sharing and
// collection race each other (and with watchers, so do starting, asking
// and stopping them), and every env still sees a whole tree.
func TestChurn(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name string
		opts []Opt
	}{
		{"without_watcher", nil},
		{"with_watcher", []Opt{withTestWatcher()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			churn(t, tt.opts)
		})
	}
}

func churn(t *testing.T, opts []Opt) {
	ctx := context.Background()
	src := gitSource(t)
	root := filepath.Join(t.TempDir(), "root")
	stop := make(chan struct{})
	var edits sync.WaitGroup
	edits.Add(1)
	go func() {
		defer edits.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			writeFile(t, src, "main.go", fmt.Sprintf("package main // %d\n", i), 0o644)
			writeFile(t, src, fmt.Sprintf("gen/f%d.go", i%7), "package gen\n", 0o644)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := New(root, opts...)
			if err != nil {
				errs <- err
				return
			}
			for i := 0; i < 5; i++ {
				id := fmt.Sprintf("churn-%d-%d", g, i)
				ws, err := m.Create(ctx, id, src, CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
				if _, err := os.Stat(filepath.Join(ws.Path, "scripts/build.sh")); err != nil {
					errs <- fmt.Errorf("env %s incomplete: %w", id, err)
				}
				if i%2 == 0 {
					if err := m.Remove(ctx, id); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	edits.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	m, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	cleanupManager(t, m)
	for _, d := range []string{dirBases, dirWS} {
		if ents, _ := os.ReadDir(filepath.Join(root, d)); len(ents) != 0 {
			t.Errorf("%d entries left in %s", len(ents), d)
		}
	}
}

// TestThinLayersMatchSource edits a source in every way a user can and
// checks after each step that a new env shows exactly the source: thin
// layer on thin layer, the stack must add up to the tree.
func TestThinLayersMatchSource(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, src, "keep.txt", "keep\n", 0o644)
	writeFile(t, src, "dir/a.txt", "a\n", 0o644)
	writeFile(t, src, "dir/sub/b.txt", "b\n", 0o644)
	writeFile(t, src, "tool.sh", "#!/bin/sh\n", 0o755)
	if err := os.Symlink("keep.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		edit func(t *testing.T)
	}{
		{"modify", func(t *testing.T) { writeFile(t, src, "keep.txt", "kept and changed\n", 0o644) }},
		{"chmod", func(t *testing.T) { os.Chmod(filepath.Join(src, "tool.sh"), 0o700) }},
		{"chown", func(t *testing.T) { os.Lchown(filepath.Join(src, "dir/a.txt"), 777, 778) }},
		{"add_tree", func(t *testing.T) { writeFile(t, src, "new/deep/x.txt", "x\n", 0o600) }},
		{"delete_tree", func(t *testing.T) { os.RemoveAll(filepath.Join(src, "dir/sub")) }},
		{"dir_becomes_file", func(t *testing.T) {
			os.RemoveAll(filepath.Join(src, "new"))
			writeFile(t, src, "new", "a file now\n", 0o644)
		}},
		{"file_becomes_dir", func(t *testing.T) {
			os.Remove(filepath.Join(src, "new"))
			writeFile(t, src, "new/inside.txt", "in\n", 0o644)
		}},
		{"retarget_symlink", func(t *testing.T) {
			os.Remove(filepath.Join(src, "link"))
			os.Symlink("dir", filepath.Join(src, "link"))
		}},
		{"empty_dir", func(t *testing.T) { os.Mkdir(filepath.Join(src, "void"), 0o711) }},
		{"rename", func(t *testing.T) { os.Rename(filepath.Join(src, "dir/a.txt"), filepath.Join(src, "dir/renamed.txt")) }},
	}
	m := newTestManager(t)
	if _, err := m.Create(ctx, "step-0", src, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.edit(t)
			ws, err := m.Create(ctx, fmt.Sprintf("step-%d", i+1), src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(ws.Layers) != i+2 {
				t.Errorf("%d layers, want %d: each step a thin layer", len(ws.Layers), i+2)
			}
			want, got := readTree(t, src, false), readTree(t, ws.Path, false)
			delete(want, ".")
			delete(got, ".")
			for rel, w := range want {
				if g, ok := got[rel]; !ok || g != w {
					t.Errorf("%q: env %+v, source %+v", rel, g, w)
				}
			}
			for rel := range got {
				if _, ok := want[rel]; !ok {
					t.Errorf("%q in env, not in source", rel)
				}
			}
		})
	}
}
