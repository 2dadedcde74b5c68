package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// treeHash is a content hash of the source tree as git sees it, index and
// working tree included, so any change to the user's files shows.
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", "git status --porcelain=v2 --branch; git rev-parse HEAD; git ls-files -s; find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha256sum")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hash tree: %v", err)
	}
	return string(out)
}

func TestDiffAndMergeThroughCLI(t *testing.T) {
	w := newWorld(t, 24)
	before := treeHash(t, w.project)
	w.mustCilo("run", "-e", "ws", "--", "sh", "-c",
		"echo new > added.txt && echo changed > README && rm sub/file && git add -A && git -c user.name=a -c user.email=a@a commit -qm 'work in env'")

	var changes []struct{ Path, Kind string }
	out := w.mustCilo("diff", "--json", "ws")
	if err := json.Unmarshal([]byte(out), &changes); err != nil {
		t.Fatalf("diff --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, c := range changes {
		got[c.Path] = c.Kind
	}
	for path, kind := range map[string]string{"added.txt": "added", "README": "modified", "sub/file": "deleted"} {
		if got[path] != kind {
			t.Errorf("diff: %s is %q, want %q (all: %v)", path, got[path], kind, got)
		}
	}
	if out := w.mustCilo("diff", "ws"); !strings.Contains(out, "A added.txt") || !strings.Contains(out, "D sub/file") {
		t.Errorf("diff text:\n%s", out)
	}
	if out := w.mustCilo("diff", "--patch", "ws"); !strings.Contains(out, "+changed") || !strings.Contains(out, "-hello") {
		t.Errorf("diff --patch:\n%s", out)
	}

	w.mustCilo("merge", "ws")
	log, err := exec.Command("git", "-C", w.project, "log", "--format=%s", "cilo/ws").Output()
	if err != nil || !strings.Contains(string(log), "work in env") {
		t.Fatalf("branch cilo/ws: %q, %v", log, err)
	}
	if after := treeHash(t, w.project); after != before {
		t.Fatalf("source tree changed by run, commit, diff or merge:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Stat(filepath.Join(w.project, "added.txt")); err == nil {
		t.Fatal("env's file leaked into the source tree")
	}
	w.mustCilo("destroy", "--force", "ws")
	if after := treeHash(t, w.project); after != before {
		t.Fatalf("source tree changed by destroy")
	}
	if _, err := w.cilo(context.Background(), "", "diff", "ws"); exitCode(err) != 1 {
		t.Fatalf("diff of a destroyed env: exit %d, want 1", exitCode(err))
	}
}

// TestWorkspaceWatcherThroughCLI checks that an env created after an edit
// of the source shows the edit, through the watcher the first create
// started, and that the watcher ends with the source's last env.
func TestWorkspaceWatcherThroughCLI(t *testing.T) {
	w := newWorld(t, 23)
	w.mustCilo("create", "one")
	if !w.waitWatchers(true) {
		t.Fatal("no watcher runs after the first create")
	}
	must(t, os.WriteFile(filepath.Join(w.project, "README"), []byte("edited\n"), 0o644))
	w.mustCilo("create", "two")
	b, err := os.ReadFile(filepath.Join(w.status("two").Workspace, "README"))
	if err != nil || string(b) != "edited\n" {
		t.Errorf("README in the env made after the edit: %q, %v", b, err)
	}
	w.mustCilo("destroy", "--force", "one")
	if len(w.watchers()) != 1 {
		t.Errorf("watchers %v with an env left, want one", w.watchers())
	}
	w.mustCilo("destroy", "--force", "two")
	if !w.waitWatchers(false) {
		t.Errorf("watchers %v still run after the last env went", w.watchers())
	}
}

// watchers returns the lock files of the world's running workspace
// watchers (each holds its lock while it runs).
func (w *world) watchers() []string {
	locks, _ := filepath.Glob(filepath.Join(w.root, "state", "workspaces", "watch", "*.lock"))
	var held []string
	for _, l := range locks {
		f, err := os.Open(l)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			held = append(held, l)
		}
		f.Close()
	}
	return held
}

// waitWatchers waits up to 10 s for some watcher to run (or none).
func (w *world) waitWatchers(running bool) bool {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if (len(w.watchers()) > 0) == running {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
