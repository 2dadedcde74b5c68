package overlayfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const otherBoot = "00000000-0000-0000-0000-00000000dead"

// setPending rewrites base id's metadata as a crash before its flush
// leaves it: marked undurable by boot.
func setPending(t *testing.T, m *Manager, id, boot string) {
	t.Helper()
	b, err := m.readBase(id)
	if err != nil {
		t.Fatal(err)
	}
	b.PendingBoot = boot
	if err := writeJSON(filepath.Join(m.baseDir(id), "meta.json"), b, true); err != nil {
		t.Fatal(err)
	}
}

// createBeside creates env "new" of src, whose base old may be torn: it
// must get a new full base of the same state beside old, showing src.
func createBeside(t *testing.T, m *Manager, src string, old *baseMeta) {
	t.Helper()
	ws, err := m.Create(context.Background(), "new", src, CreateOptions{})
	if err != nil {
		t.Fatalf("create beside base %s: %v", old.ID, err)
	}
	nb := mustBase(t, m, "new")
	if nb.ID == old.ID || len(ws.Layers) != 1 || nb.Key != old.Key {
		t.Errorf("new env on base %s (layers %v), want a new full base of the same state beside %s", nb.ID, ws.Layers, old.ID)
	}
	if got := readString(t, filepath.Join(ws.Path, "main.go")); !strings.HasPrefix(got, "package main") {
		t.Errorf("new env shows %q", got)
	}
}

func mustBase(t *testing.T, m *Manager, wsID string) *baseMeta {
	t.Helper()
	b, err := m.readBase(mustWS(t, m, wsID).Base)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func waitDurable(t *testing.T, m *Manager, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.WaitDurable(ctx, id); err != nil {
		t.Fatalf("base of %s not marked durable: %v", id, err)
	}
}

// simulateReboot drops every mount of workspace id and its base image, as
// a reboot does.
func simulateReboot(t *testing.T, m *Manager, id string) {
	t.Helper()
	if err := m.Unmount(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	b := mustBase(t, m, id)
	if err := unmountImage(m.layerDir(b.Layers[len(b.Layers)-1])); err != nil {
		t.Fatal(err)
	}
}

func noTempFiles(t *testing.T, m *Manager) {
	t.Helper()
	tmps, _ := filepath.Glob(filepath.Join(m.root, dirBases, "*", "*.tmp"))
	if len(tmps) > 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
}

// TestBaseDurableInline: without watchers, Create flushes the base itself
// and the base is marked durable when Create returns.
func TestBaseDurableInline(t *testing.T) {
	requireRoot(t)
	m := newTestManager(t, WithWatcher(nil))
	src := gitSource(t)
	if _, err := m.Create(context.Background(), "a", src, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if b := mustBase(t, m, "a"); b.PendingBoot != "" {
		t.Errorf("base still pending (%s) after an inline flush", b.PendingBoot)
	}
	noTempFiles(t, m)
}

// TestBaseDurableByWatcher: with a watcher, Create returns with the base
// still pending, and the watcher flushes and marks it: the first base
// (handed over at the watcher's start) and a thin layer (asked over the
// socket).
func TestBaseDurableByWatcher(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	m := newTestManager(t)
	src := gitSource(t)
	if _, err := m.Create(ctx, "a", src, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDurable(t, m, "a")
	waitWatcher(t, m, src, nil)
	writeFile(t, src, "main.go", "package main\n\n// edited\nfunc main() {}\n", 0o644)
	ws, err := m.Create(ctx, "b", src, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ws.Layers) != 2 {
		t.Fatalf("edited source gave %d layers, want a thin layer over the first base", len(ws.Layers))
	}
	waitDurable(t, m, "b")
	for _, id := range mustBase(t, m, "b").Layers {
		if b, err := m.readBase(id); err != nil || b.PendingBoot != "" {
			t.Errorf("layer %s: pending %q, err %v", id, b.PendingBoot, err)
		}
	}
	log, _ := os.ReadFile(m.watchPath("", "log"))
	if n := strings.Count(string(log), "on disk after"); n < 2 {
		t.Errorf("watcher log names %d flushes, want 2:\n%s", n, log)
	}
	noTempFiles(t, m)
}

// TestBaseDurableBySyncer: when no watcher answers (here: another process
// holds the watcher's lock, as a Create still reading the source does),
// a detached syncer flushes the base, marks it and exits.
func TestBaseDurableBySyncer(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	var mu sync.Mutex
	var cmds []*exec.Cmd
	rec := WithWatcher(func() *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), watcherEnv+"=1")
		mu.Lock()
		cmds = append(cmds, cmd)
		mu.Unlock()
		return cmd
	})
	m := newTestManager(t, rec)
	src := gitSource(t)
	fd, err := lockFD(m.watchPath(watchKey(src, nil), ".lock"), true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Create(ctx, "a", src, CreateOptions{})
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	waitDurable(t, m, "a")
	mu.Lock()
	started := append([]*exec.Cmd(nil), cmds...)
	mu.Unlock()
	if len(started) != 1 {
		t.Fatalf("%d processes started, want one syncer", len(started))
	}
	pid := started[0].Process.Pid
	for deadline := time.Now().Add(5 * time.Second); unix.Kill(pid, 0) == nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("syncer %d still running after its flush", pid)
		}
	}
	noTempFiles(t, m)
}

// TestTornBase: a base left undurable by an earlier boot is never used
// again for a new env, nor as the parent of a thin layer, and an env on
// it cannot be mounted again; one left undurable by this boot is used as
// any other.
func TestTornBase(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()

	for _, watch := range []bool{false, true} {
		t.Run(fmt.Sprintf("not_reused/watcher=%v", watch), func(t *testing.T) {
			var opts []Opt
			if !watch {
				opts = append(opts, WithWatcher(nil))
			}
			m := newTestManager(t, opts...)
			src := gitSource(t)
			if _, err := m.Create(ctx, "old", src, CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			waitDurable(t, m, "old")
			old := mustBase(t, m, "old")
			setPending(t, m, old.ID, otherBoot)
			if watch {
				waitWatcher(t, m, src, nil) // it vouches for the torn base
			}
			createBeside(t, m, src, old)
			// The torn base stays for its env until that is removed.
			if err := m.Remove(ctx, "old"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(m.baseDir(old.ID)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("torn base left after its env went: %v", err)
			}
		})
	}

	t.Run("not_a_parent", func(t *testing.T) {
		m := newTestManager(t, WithWatcher(nil))
		src := gitSource(t)
		if _, err := m.Create(ctx, "old", src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		old := mustBase(t, m, "old")
		setPending(t, m, old.ID, otherBoot)
		writeFile(t, src, "main.go", "package main\n\n// edited\nfunc main() {}\n", 0o644)
		ws, err := m.Create(ctx, "edited", src, CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(ws.Layers) != 1 {
			t.Errorf("env after an edit stacked on a torn base: layers %v", ws.Layers)
		}
	})

	t.Run("remount_fails", func(t *testing.T) {
		m := newTestManager(t, WithWatcher(nil))
		src := gitSource(t)
		ws, err := m.Create(ctx, "old", src, CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, ws.Path, "README.md", "mine\n", 0o644)
		old := mustBase(t, m, "old")
		simulateReboot(t, m, "old")
		setPending(t, m, old.ID, otherBoot)
		_, err = m.Ensure(ctx, "old")
		if !errors.Is(err, ErrTornBase) {
			t.Fatalf("Ensure of an env on a torn base: %v, want ErrTornBase", err)
		}
		upper := mustWS(t, m, "old").Upper
		for _, want := range []string{upper, "cilo destroy", "earlier boot"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		if _, err := m.Diff(ctx, "old"); !errors.Is(err, ErrTornBase) {
			t.Errorf("Diff of an env on a torn base: %v, want ErrTornBase", err)
		}
		if imageMounted(m.layerDir(old.ID)) {
			t.Error("torn image mounted again")
		}
		if got := readString(t, filepath.Join(upper, "README.md")); got != "mine\n" {
			t.Errorf("upper holds %q", got)
		}
		if err := m.markDurable(ctx, old.ID); !errors.Is(err, ErrTornBase) {
			t.Errorf("marking a torn base durable: %v, want ErrTornBase", err)
		}
		if b := mustBase(t, m, "old"); b.PendingBoot != otherBoot {
			t.Errorf("torn base's mark changed to %q", b.PendingBoot)
		}
		noTempFiles(t, m)
	})

	// The mark itself is written without a flush: a crash can leave the
	// base's metadata empty, which must mean the same as a torn mark.
	t.Run("metadata_lost", func(t *testing.T) {
		m := newTestManager(t, WithWatcher(nil))
		src := gitSource(t)
		if _, err := m.Create(ctx, "old", src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		old := mustBase(t, m, "old")
		upper := mustWS(t, m, "old").Upper
		simulateReboot(t, m, "old")
		if err := os.WriteFile(filepath.Join(m.baseDir(old.ID), "meta.json"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, op := range []struct {
			name string
			do   func() error
		}{
			{"Ensure", func() error { _, err := m.Ensure(ctx, "old"); return err }},
			{"Diff", func() error { _, err := m.Diff(ctx, "old"); return err }},
		} {
			if err := op.do(); !errors.Is(err, ErrTornBase) || !strings.Contains(err.Error(), upper) {
				t.Errorf("%s of an env whose base lost its metadata: %v, want ErrTornBase naming %s", op.name, err, upper)
			}
		}
		createBeside(t, m, src, old)
	})

	t.Run("thin_layer_remount_fails", func(t *testing.T) {
		m := newTestManager(t, WithWatcher(nil))
		src := gitSource(t)
		if _, err := m.Create(ctx, "a", src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		writeFile(t, src, "main.go", "package main\n\n// edited\nfunc main() {}\n", 0o644)
		if _, err := m.Create(ctx, "b", src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		thin := mustBase(t, m, "b")
		if len(thin.Layers) != 2 {
			t.Fatalf("layers %v, want a thin layer", thin.Layers)
		}
		simulateReboot(t, m, "a")
		simulateReboot(t, m, "b")
		setPending(t, m, thin.ID, otherBoot)
		if _, err := m.Ensure(ctx, "a"); err != nil {
			t.Errorf("env on the durable base below: %v", err)
		}
		if _, err := m.Ensure(ctx, "b"); !errors.Is(err, ErrTornBase) {
			t.Errorf("Ensure of an env on a torn thin layer: %v, want ErrTornBase", err)
		}
	})

	t.Run("same_boot_used", func(t *testing.T) {
		m := newTestManager(t, WithWatcher(nil))
		m.bootID = func() (string, error) { return "this-boot", nil }
		src := gitSource(t)
		ws, err := m.Create(ctx, "a", src, CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, ws.Path, "README.md", "mine\n", 0o644)
		b := mustBase(t, m, "a")
		setPending(t, m, b.ID, "this-boot")
		if _, err := m.Create(ctx, "a2", src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := mustWS(t, m, "a2").Base; got != b.ID {
			t.Errorf("second env on base %s, want the undurable base of this boot %s", got, b.ID)
		}
		// Without a watcher that Create flushed and marked it; again as
		// a crash before the flush would leave it.
		setPending(t, m, b.ID, "this-boot")
		simulateReboot(t, m, "a") // only the mounts: same boot id
		simulateReboot(t, m, "a2")
		if _, err := m.Ensure(ctx, "a"); err != nil {
			t.Fatalf("Ensure within the same boot: %v", err)
		}
		if got := readString(t, filepath.Join(ws.Path, "README.md")); got != "mine\n" {
			t.Errorf("after remount: %q", got)
		}
		// Another Manager, after a reboot: the same metadata is torn.
		m2, err := New(m.root, WithWatcher(nil))
		if err != nil {
			t.Fatal(err)
		}
		m2.bootID = func() (string, error) { return "next-boot", nil }
		simulateReboot(t, m, "a")
		if _, err := m2.Ensure(ctx, "a"); !errors.Is(err, ErrTornBase) {
			t.Errorf("Ensure in another boot: %v, want ErrTornBase", err)
		}
	})
}

// TestBaseDurableAfterGC: a flush of a base that is collected before it
// is marked is harmless: nothing of the base comes back, no error.
func TestBaseDurableAfterGC(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	m := newTestManager(t)
	src := gitSource(t)
	if _, err := m.Create(ctx, "a", src, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	id := mustBase(t, m, "a").ID
	// Removed at once: the watcher's flush, started with it, races the
	// collection and the watcher's stop.
	if err := m.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := m.markDurable(ctx, id); err != nil {
		t.Errorf("marking a collected base: %v", err)
	}
	if pids := waitWatchersGone(m.root, 5*time.Second); len(pids) > 0 {
		t.Errorf("watchers left: %v", pids)
	}
	for _, d := range []string{dirBases, dirTmp} {
		ents, _ := os.ReadDir(filepath.Join(m.root, d))
		var left []string
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "probe") {
				left = append(left, e.Name())
			}
		}
		if len(left) > 0 {
			t.Errorf("%s/ holds %v after the last env went", d, left)
		}
	}
}

// TestUnflushedBase: a base whose flush was lost (the process meant to do
// it exits without flushing) is listed once its grace has passed, until
// Flush makes it durable; a base torn by an earlier boot is not listed
// (nothing can flush it now).
func TestUnflushedBase(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	// Every watcher or syncer started is `true`: the flush is lost.
	m := newTestManager(t, WithWatcher(func() *exec.Cmd { return exec.Command("true") }))
	src := gitSource(t)
	if _, err := m.Create(ctx, "a", src, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w, err := m.readWS("a")
	if err != nil {
		t.Fatal(err)
	}
	list := func(grace time.Duration) []string {
		t.Helper()
		ids, err := m.Unflushed(ctx, grace)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if ids := list(time.Hour); len(ids) != 0 {
		t.Fatalf("within its grace: %v listed", ids)
	}
	if ids := list(0); !slices.Equal(ids, []string{w.Base}) {
		t.Fatalf("unflushed %v, want [%s]", ids, w.Base)
	}
	boot := m.bootID
	m.bootID = func() (string, error) { return "next-boot", nil }
	if ids := list(0); len(ids) != 0 {
		t.Fatalf("after a reboot: %v listed, want none (torn)", ids)
	}
	m.bootID = boot
	if err := m.Flush(ctx, w.Base); err != nil {
		t.Fatal(err)
	}
	if ids := list(0); len(ids) != 0 {
		t.Fatalf("after Flush: %v still listed", ids)
	}
	waitDurable(t, m, "a")
	if err := m.Flush(ctx, "../a"); err == nil {
		t.Fatal("Flush of ../a succeeded")
	}
}
