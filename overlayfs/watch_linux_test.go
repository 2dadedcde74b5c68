package overlayfs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// drainTracker applies every queued event, as a watcher does before it
// answers.
func drainTracker(t *testing.T, tr *tracker) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(tr.fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.handle(buf[:n]); err != nil {
			t.Fatal(err)
		}
	}
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

// TestTrackerPatch changes a source while a tracker watches it, as in a
// watcher process, and checks that the manifest patched with the paths
// the tracker reports is exactly what a fresh walk gives, and that the
// tracker still watches exactly the source's directories. Steps are
// separate reads of the event queue, as when changes come while the
// watcher runs.
func TestTrackerPatch(t *testing.T) {
	type step func(t *testing.T, src, outside string)
	tests := []struct {
		name  string
		steps []step
	}{
		{"nothing", nil},
		{"modify", []step{func(t *testing.T, src, _ string) { writeFile(t, src, "a/f.txt", "changed\n", 0o644) }}},
		{"chmod_dir", []step{func(t *testing.T, src, _ string) { os.Chmod(filepath.Join(src, "a/b"), 0o700) }}},
		{"chmod_root", []step{func(t *testing.T, src, _ string) { os.Chmod(src, 0o750) }}},
		{"new_file_in_root", []step{func(t *testing.T, src, _ string) { writeFile(t, src, "new.txt", "n\n", 0o644) }}},
		{"delete_file", []step{func(t *testing.T, src, _ string) { os.Remove(filepath.Join(src, "a/b/g.txt")) }}},
		{"new_tree", []step{func(t *testing.T, src, _ string) { writeFile(t, src, "n/x/y/deep.txt", "d\n", 0o644) }}},
		{"new_tree_then_edit_inside", []step{
			func(t *testing.T, src, _ string) { writeFile(t, src, "n/x/y/deep.txt", "d\n", 0o644) },
			func(t *testing.T, src, _ string) { writeFile(t, src, "n/x/more.txt", "m\n", 0o600) },
		}},
		{"delete_tree", []step{func(t *testing.T, src, _ string) { os.RemoveAll(filepath.Join(src, "a")) }}},
		{"rename_file", []step{func(t *testing.T, src, _ string) {
			mustRename(t, filepath.Join(src, "keep.txt"), filepath.Join(src, "a/kept.txt"))
		}}},
		{"rename_dir_then_edit_inside", []step{
			func(t *testing.T, src, _ string) { mustRename(t, filepath.Join(src, "a"), filepath.Join(src, "c")) },
			func(t *testing.T, src, _ string) { writeFile(t, src, "c/b/g.txt", "moved and changed\n", 0o644) },
		}},
		{"move_dir_out_then_edit_it", []step{
			func(t *testing.T, src, out string) { mustRename(t, filepath.Join(src, "a"), filepath.Join(out, "a")) },
			func(t *testing.T, _, out string) { writeFile(t, out, "a/b/g.txt", "outside now\n", 0o644) },
		}},
		{"move_dir_in_then_edit_it", []step{
			func(t *testing.T, src, out string) {
				writeFile(t, out, "in/sub/file.txt", "from outside\n", 0o644)
				mustRename(t, filepath.Join(out, "in"), filepath.Join(src, "in"))
			},
			func(t *testing.T, src, _ string) { writeFile(t, src, "in/sub/file.txt", "edited inside\n", 0o644) },
		}},
		{"file_becomes_dir", []step{func(t *testing.T, src, _ string) {
			os.Remove(filepath.Join(src, "keep.txt"))
			writeFile(t, src, "keep.txt/inside.txt", "i\n", 0o644)
		}}},
		{"dir_becomes_file", []step{func(t *testing.T, src, _ string) {
			os.RemoveAll(filepath.Join(src, "z"))
			writeFile(t, src, "z", "a file\n", 0o644)
		}}},
		{"retarget_symlink", []step{func(t *testing.T, src, _ string) {
			os.Remove(filepath.Join(src, "link"))
			os.Symlink("a/b", filepath.Join(src, "link"))
		}}},
		{"excluded_paths", []step{func(t *testing.T, src, _ string) {
			writeFile(t, src, "node_modules/y.js", "y\n", 0o644)
			writeFile(t, src, "node_modules/sub/z.js", "z\n", 0o644)
			writeFile(t, src, "a/node_modules/q.js", "q\n", 0o644)
		}}},
		{"git_state", []step{func(t *testing.T, src, _ string) {
			writeFile(t, src, ".git/HEAD", "ref: refs/heads/other\n", 0o644)
			writeFile(t, src, ".git/objects/ab/cdef", "obj", 0o444)
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			src := filepath.Join(t.TempDir(), "src")
			outside := t.TempDir()
			writeFile(t, src, "keep.txt", "keep\n", 0o644)
			writeFile(t, src, "a/f.txt", "f\n", 0o644)
			writeFile(t, src, "a/b/g.txt", "g\n", 0o644)
			writeFile(t, src, "z/deep/er/h.txt", "h\n", 0o644)
			writeFile(t, src, "node_modules/x.js", "x\n", 0o644)
			writeFile(t, src, ".git/HEAD", "ref: refs/heads/main\n", 0o644)
			writeFile(t, src, ".git/objects/ab/0123", "obj", 0o444)
			if err := os.Symlink("keep.txt", filepath.Join(src, "link")); err != nil {
				t.Fatal(err)
			}
			ex, err := sourceExcluder(src, "/nonexistent", []string{"node_modules"})
			if err != nil {
				t.Fatal(err)
			}
			ws, err := newWatchSet()
			if err != nil {
				t.Fatal(err)
			}
			defer ws.close()
			w, err := walkTree(ctx, src, ex, ws)
			if err != nil || ws.err != nil {
				t.Fatal(err, ws.err)
			}
			old := manifestFromWalk(w)
			tr, err := newTracker(src, ws.fd, ex, ws.dirs)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond) // let ctime move on coarse clocks
			for _, st := range tt.steps {
				st(t, src, outside)
				drainTracker(t, tr)
			}
			changed, ok := tr.since(0)
			if !ok {
				t.Fatal("changes not itemized")
			}
			got, err := patchManifest(ctx, src, old, changed, ex)
			if err != nil {
				t.Fatal(err)
			}
			w2, err := walkTree(ctx, src, ex, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := manifestFromWalk(w2)
			if !slices.Equal(got, want) {
				t.Errorf("patched manifest differs from a walk (changes %+v)", changed)
				for i := 0; i < max(len(got), len(want)); i++ {
					var g, w mentry
					if i < len(got) {
						g = got[i]
					}
					if i < len(want) {
						w = want[i]
					}
					if g != w {
						t.Errorf("  %d: patched %q %+v, walk %q %+v", i, g.rel, g.s, w.rel, w.s)
					}
				}
			}
			var watched, dirs []string
			for _, rel := range tr.dirs {
				watched = append(watched, rel)
			}
			for _, e := range want {
				if e.s.Mode&unix.S_IFMT == unix.S_IFDIR {
					dirs = append(dirs, e.rel)
				}
			}
			slices.Sort(watched)
			slices.Sort(dirs)
			if !slices.Equal(watched, dirs) {
				t.Errorf("watched %q, want the source's directories %q", watched, dirs)
			}
		})
	}
}

// TestManifestOrder checks that a walk lists paths in manifestLess order,
// which patchManifest relies on, with names that sort around "/".
func TestManifestOrder(t *testing.T) {
	dir := t.TempDir()
	for _, rel := range []string{"a/z", "a.c", "a!", "a-b/c", "a/b/c", "ab", "a b", "\x01", "~"} {
		writeFile(t, dir, rel, "x", 0o644)
	}
	w, err := walkTree(context.Background(), dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	man := manifestFromWalk(w)
	if !slices.IsSortedFunc(man, func(a, b mentry) int {
		if manifestLess(a.rel, b.rel) {
			return -1
		}
		return 1
	}) {
		var rels []string
		for _, e := range man {
			rels = append(rels, e.rel)
		}
		t.Errorf("walk order %q is not manifestLess order", rels)
	}
}

// event builds one inotify event as the kernel writes it.
func event(wd int32, mask uint32, name string) []byte {
	n := (len(name) + 16) &^ 15
	b := make([]byte, unix.SizeofInotifyEvent+n)
	binary.NativeEndian.PutUint32(b[0:], uint32(wd))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(n))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

// TestTrackerStale checks the events after which a watcher must stop
// vouching for its source.
func TestTrackerStale(t *testing.T) {
	tests := []struct {
		name  string
		ev    []byte
		stale bool
	}{
		{"overflow", event(-1, unix.IN_Q_OVERFLOW, ""), true},
		{"unmount", event(2, unix.IN_UNMOUNT, ""), true},
		{"source_removed", event(1, unix.IN_DELETE_SELF, ""), true},
		{"source_renamed", event(1, unix.IN_MOVE_SELF, ""), true},
		{"source_watch_gone", event(1, unix.IN_IGNORED, ""), true},
		{"subdirectory_removed", event(2, unix.IN_DELETE_SELF, ""), false},
		{"subdirectory_watch_gone", event(2, unix.IN_IGNORED, ""), false},
		{"file_written", event(2, unix.IN_MODIFY, "f.txt"), false},
		{"truncated_event", event(2, unix.IN_MODIFY, "f.txt")[:20], true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := newTracker(t.TempDir(), -1, nil, dirMap{1: "", 2: "sub"})
			if err != nil {
				t.Fatal(err)
			}
			err = tr.handle(tt.ev)
			if got := errors.Is(err, errStale); got != tt.stale {
				t.Errorf("stale = %v (%v), want %v", got, err, tt.stale)
			}
		})
	}
}

// TestWatchableFS checks that only local filesystems are watched.
func TestWatchableFS(t *testing.T) {
	tests := []struct {
		name, dir string
		ok        bool
	}{
		{"temp_dir", t.TempDir(), true},
		{"procfs", "/proc", false},
		{"sysfs", "/sys", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd, err := openDir(tt.dir)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := watchableFS(fd); (err == nil) != tt.ok {
				t.Errorf("watchableFS(%s) = %v, want ok %v", tt.dir, err, tt.ok)
			}
		})
	}
}

// TestTrackerBounded checks that a tracker says "not itemized" once more
// paths changed than a thin layer takes, and itemizes again after a mark
// newer than that.
func TestTrackerBounded(t *testing.T) {
	tr, err := newTracker(t.TempDir(), -1, nil, dirMap{1: ""})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= maxTracked; i++ {
		tr.record(fmt.Sprintf("f%d", i), false)
	}
	if _, ok := tr.since(0); ok {
		t.Fatalf("%d changes itemized, over the bound of %d", maxTracked+1, maxTracked)
	}
	mark := tr.seq
	tr.prune(mark)
	tr.record("after", false)
	got, ok := tr.since(mark)
	if !ok || len(got) != 1 || got[0].Rel != "after" {
		t.Errorf("since the newer mark: %+v, %v; want [after]", got, ok)
	}
	if _, ok := tr.since(mark - 1); ok {
		t.Error("changes before the newer mark still itemized")
	}
}

// TestWatchedCreates runs the edits of a user through Creates with a
// watcher: each new env is made from the changed paths alone (or from the
// watcher's word when nothing changed), and shows exactly the source.
func TestWatchedCreates(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "src")
	outside := t.TempDir()
	writeFile(t, src, "keep.txt", "keep\n", 0o644)
	writeFile(t, src, "dir/a.txt", "a\n", 0o644)
	writeFile(t, src, "dir/sub/b.txt", "b\n", 0o644)
	writeFile(t, src, "logs/app.log", "started\n", 0o644)
	excludes := []string{"logs"}
	steps := []struct {
		name   string
		edit   func(t *testing.T)
		want   readHow
		layers int // more layers than the step before
	}{
		{"nothing", func(t *testing.T) {}, readWatched, 0},
		{"excluded_only", func(t *testing.T) { writeFile(t, src, "logs/app.log", "more\n", 0o644) }, readWatched, 0},
		{"modify", func(t *testing.T) { writeFile(t, src, "keep.txt", "changed\n", 0o644) }, readPatched, 1},
		{"then_nothing", func(t *testing.T) {}, readWatched, 0},
		{"rename_dir", func(t *testing.T) { mustRename(t, filepath.Join(src, "dir"), filepath.Join(src, "moved")) }, readPatched, 1},
		{"edit_renamed", func(t *testing.T) { writeFile(t, src, "moved/sub/b.txt", "b2\n", 0o644) }, readPatched, 1},
		{"move_in", func(t *testing.T) {
			writeFile(t, outside, "in/x.txt", "x\n", 0o644)
			mustRename(t, filepath.Join(outside, "in"), filepath.Join(src, "in"))
		}, readPatched, 1},
		{"move_out", func(t *testing.T) { mustRename(t, filepath.Join(src, "moved"), filepath.Join(outside, "moved")) }, readPatched, 1},
		{"edit_moved_out", func(t *testing.T) { writeFile(t, outside, "moved/a.txt", "not ours\n", 0o644) }, readWatched, 0},
	}
	m := newTestManager(t)
	ws, err := m.Create(ctx, "step-0", src, CreateOptions{Exclude: excludes})
	if err != nil {
		t.Fatal(err)
	}
	layers := len(ws.Layers)
	waitWatcher(t, m, src, excludes)
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			time.Sleep(10 * time.Millisecond) // let ctime move on coarse clocks
			st.edit(t)
			ws, how, err := m.create(ctx, fmt.Sprintf("step-%d", i+1), src, CreateOptions{Exclude: excludes})
			if err != nil {
				t.Fatal(err)
			}
			if how != st.want {
				t.Errorf("state read by %d, want %d", how, st.want)
			}
			if len(ws.Layers) != layers+st.layers {
				t.Errorf("%d layers, want %d", len(ws.Layers), layers+st.layers)
			}
			layers = len(ws.Layers)
			want, got := readTree(t, src, false), readTree(t, ws.Path, false)
			delete(want, ".")
			delete(got, ".")
			for rel := range want {
				if rel == "logs" || filepath.Dir(rel) == "logs" {
					delete(want, rel)
				}
			}
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

// TestWatcherFallbacks checks that a Create whose watcher cannot vouch for
// the source reads the source itself, gets it right, and leaves a watcher
// that can.
func TestWatcherFallbacks(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name    string
		disrupt func(t *testing.T, m *Manager, src string)
		want    readHow
	}{
		{"watcher_killed", func(t *testing.T, m *Manager, src string) {
			pids := watcherPIDs(m.root)
			if len(pids) != 1 || pids[0] <= 0 {
				t.Fatalf("watchers %v, want one", pids)
			}
			unix.Kill(pids[0], unix.SIGKILL)
			waitWatchersGone(m.root, 5*time.Second)
			writeFile(t, src, "main.go", "package main // while nobody watched\n", 0o644)
		}, readWalked},
		{"source_replaced", func(t *testing.T, m *Manager, src string) {
			mustRename(t, src, src+".old")
			writeFile(t, src, "main.go", "package main // a new tree\n", 0o644)
		}, readWalked},
		{"source_restored_unchanged", func(t *testing.T, m *Manager, src string) {
			pids := watcherPIDs(m.root)
			unix.Kill(pids[0], unix.SIGKILL)
			waitWatchersGone(m.root, 5*time.Second)
		}, readChecked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			src := filepath.Join(t.TempDir(), "src")
			writeFile(t, src, "main.go", "package main\n", 0o644)
			writeFile(t, src, "pkg/lib.go", "package pkg\n", 0o644)
			m := newTestManager(t)
			if _, err := m.Create(ctx, "first", src, CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			waitWatcher(t, m, src, nil)
			time.Sleep(10 * time.Millisecond)
			tt.disrupt(t, m, src)
			ws, how, err := m.create(ctx, "after", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if how != tt.want {
				t.Errorf("state read by %d, want %d", how, tt.want)
			}
			if got, want := readString(t, filepath.Join(ws.Path, "main.go")), readString(t, filepath.Join(src, "main.go")); got != want {
				t.Errorf("env's main.go %q, source's %q", got, want)
			}
			waitWatcher(t, m, src, nil)
			if _, how, err := m.create(ctx, "again", src, CreateOptions{}); err != nil || how != readWatched {
				t.Errorf("next env: read by %d, %v; want the new watcher's word", how, err)
			}
		})
	}
}

// sourceTimes records every path's stamp and access time.
func sourceTimes(t *testing.T, src string) map[string][2]any {
	t.Helper()
	w, err := walkTree(context.Background(), src, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]any{}
	for _, e := range w.entries {
		out[e.rel] = [2]any{stampOf(e.rel, &e.st), e.st.Atim}
	}
	return out
}

// TestWatcherLifetime checks that a watcher runs while any env of its
// source is left, and only then, and that nothing of it (nor of the
// creates) touches the source: not even a ctime or an atime moves.
func TestWatcherLifetime(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	src := gitSource(t)
	before := sourceTimes(t, src)
	m := newTestManager(t)
	for _, id := range []string{"one", "two"} {
		if _, err := m.Create(ctx, id, src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitWatcher(t, m, src, nil)
	if err := m.Remove(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if pids := watcherPIDs(m.root); len(pids) != 1 {
		t.Errorf("watchers %v with one env left, want one", pids)
	}
	if err := m.Remove(ctx, "two"); err != nil {
		t.Fatal(err)
	}
	if pids := waitWatchersGone(m.root, 5*time.Second); len(pids) != 0 {
		t.Errorf("watchers %v still running after the last env went", pids)
	}
	after := sourceTimes(t, src)
	for rel, b := range before {
		if a := after[rel]; a != b {
			t.Errorf("%q: stamp and atime %v, were %v", rel, a, b)
		}
	}
	if len(after) != len(before) {
		t.Errorf("%d paths in the source, were %d", len(after), len(before))
	}
}
