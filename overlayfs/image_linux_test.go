package overlayfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/overlayfs/erofs"
	"github.com/cilo-dev/cilo/overlayfs/mounted"
)

// imageTree fills dir with what an image must keep beyond richTree: sizes
// around the block and inline limits and the clone threshold, names that
// sort before "." and directories spanning several blocks, owners past 16
// bits, setuid and sticky bits, nanosecond mtimes, long symlinks, a .git
// directory and a .git file, three names of one inode.
func imageTree(t *testing.T, dir string) {
	t.Helper()
	richTree(t, dir)
	for _, n := range []int{0, 1, 100, 4031, 4032, 4033, 4095, 4096, 4097, 8191, 8192, 12345,
		erofs.DefaultCloneMin - 1, erofs.DefaultCloneMin, erofs.DefaultCloneMin + 1, erofs.DefaultCloneMin + 4090,
		300 << 10, 1<<20 + 3} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i*31 + n)
		}
		writeFile(t, dir, fmt.Sprintf("sizes/%d.bin", n), string(data), 0o644)
	}
	for _, name := range []string{"-x", "!", "#hash", "+plus", ",comma", "..dots", ".hidden", "~tilde", "\x01ctl"} {
		writeFile(t, dir, "sorting/"+name, name, 0o644)
	}
	// Long names: a directory of several blocks, and one of exactly-full
	// blocks' worth of short names.
	for i := 0; i < 700; i++ {
		writeFile(t, dir, fmt.Sprintf("wide/%03d-%s", i, strings.Repeat("n", i%200)), "", 0o644)
	}
	for i := 0; i < 1000; i++ {
		writeFile(t, dir, fmt.Sprintf("narrow/%d", i), "", 0o644)
	}
	writeFile(t, dir, "modes/setuid", "#!/bin/sh\n", 0o4755)
	writeFile(t, dir, "modes/setgid", "#!/bin/sh\n", 0o2711)
	writeFile(t, dir, "modes/none", "nobody\n", 0)
	if err := os.MkdirAll(filepath.Join(dir, "modes/sticky"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "modes/sticky"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(dir, "modes/none"), 100000, 200000); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, ".git/HEAD", "ref: refs/heads/main\n", 0o644)
	writeFile(t, dir, "sub/.git", "gitdir: /somewhere/else\n", 0o644)
	for _, l := range []struct{ target, name string }{
		{strings.Repeat("d/", 2015) + "x", "links/inline-longest"}, // 4031 bytes: inline
		{strings.Repeat("d/", 2040) + "x", "links/not-inline"},     // 4081 bytes: its own block
		{"../sizes", "links/to-dir"},
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, l.name)), 0o755); err != nil {
			t.Fatal(err)
		}
		err := os.Symlink(l.target, filepath.Join(dir, l.name))
		if errors.Is(err, unix.ENAMETOOLONG) {
			// XFS holds symlinks of up to 1024 bytes; ext4 up to 4095.
			t.Logf("%s: this filesystem holds no symlink of %d bytes", l.name, len(l.target))
			continue
		}
		if err != nil {
			t.Fatalf("symlink %s: %v", l.name, err)
		}
	}
	if err := os.Link(filepath.Join(dir, "README.md"), filepath.Join(dir, "sorting/third name")); err != nil {
		t.Fatal(err)
	}
	// A second name of a file whose blocks are cloned.
	if err := os.Link(filepath.Join(dir, "sizes/1048579.bin"), filepath.Join(dir, "sorting/big twice")); err != nil {
		t.Fatal(err)
	}
	ns := time.Date(2021, 5, 6, 7, 8, 9, 123456789, time.UTC)
	for _, p := range []string{"sizes/4097.bin", "sizes", "wide"} {
		if err := os.Chtimes(filepath.Join(dir, p), ns, ns); err != nil {
			t.Fatal(err)
		}
	}
	pre := time.Date(1960, 1, 1, 0, 0, 0, 5, time.UTC) // before the epoch
	if err := os.Chtimes(filepath.Join(dir, "sizes/0.bin"), pre, pre); err != nil {
		t.Fatal(err)
	}
}

// TestImageRoundTrip writes an image of a tree holding every case, mounts
// it and compares every path with the source: type, mode, owner, size,
// mtime in nanoseconds, symlink target, hardlink identity and content.
func TestImageRoundTrip(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		dir   func(t *testing.T) string // where source and image live
		opts  erofs.Options
		mount func(image, dir string) error
		clone bool // expect reflinked blocks
	}{
		{"xfs_reflink", xfsDir, erofs.Options{Reflink: true}, mountImage, true},
		{"xfs_reflink_small_files_too", xfsDir, erofs.Options{Reflink: true, CloneMin: 1}, mountImage, true},
		{"copied", func(t *testing.T) string { return t.TempDir() }, erofs.Options{}, mountImage, false},
		{"loop_device", func(t *testing.T) string { return t.TempDir() }, erofs.Options{Reflink: true}, mountImageLoop, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			dir := tt.dir(t)
			src := filepath.Join(dir, "src")
			imageTree(t, src)
			w, err := walkTree(ctx, src, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(dir, "image.erofs")
			st, err := erofs.Write(ctx, img, src, imageEntries(w), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", st)
			if tt.clone != (st.Cloned > 0) || tt.clone != st.Reflinked {
				t.Errorf("cloned %d files (reflinked %v), want clones: %v", st.Cloned, st.Reflinked, tt.clone)
			}
			fsckImage(t, img)
			mnt := filepath.Join(dir, "mnt")
			if err := os.Mkdir(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := tt.mount(img, mnt); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := unmountImage(mnt); err != nil {
					t.Error(err)
				}
			})
			if !imageMounted(mnt) {
				t.Fatal("imageMounted does not see the mount")
			}
			compareImage(t, src, mnt, w)
		})
	}
}

// fsckImage runs erofs-utils' checker when the machine has it (the kernel
// mount is the test that counts).
func fsckImage(t *testing.T, img string) {
	t.Helper()
	if _, err := exec.LookPath("fsck.erofs"); err != nil {
		t.Log("fsck.erofs not installed (apt-get install erofs-utils): image not checked by it")
		return
	}
	if out, err := exec.Command("fsck.erofs", "--extract", img).CombinedOutput(); err != nil {
		t.Errorf("fsck.erofs %s: %v\n%s", img, err, out)
	}
}

// compareImage checks that mnt shows exactly what the walk w of src found.
func compareImage(t *testing.T, src, mnt string, w *walkResult) {
	t.Helper()
	links := map[string]int{} // first path of an inode -> names in the tree
	for _, e := range w.entries {
		if e.link != "" {
			links[e.link]++
		}
	}
	all := map[string]bool{}
	for _, e := range w.entries {
		all[e.rel] = true
	}
	inos := map[uint64]string{}
	for _, e := range w.entries {
		p := join(mnt, e.rel)
		var got unix.Stat_t
		if err := unix.Lstat(p, &got); err != nil {
			t.Errorf("%q: %v", e.rel, err)
			continue
		}
		want := e.st
		if got.Mode != want.Mode || got.Uid != want.Uid || got.Gid != want.Gid {
			t.Errorf("%q: mode %o owner %d:%d, want %o %d:%d", e.rel, got.Mode, got.Uid, got.Gid, want.Mode, want.Uid, want.Gid)
		}
		if got.Mtim != want.Mtim {
			t.Errorf("%q: mtime %v, want %v", e.rel, got.Mtim, want.Mtim)
		}
		switch e.typ() {
		case unix.S_IFREG:
			if got.Size != want.Size {
				t.Errorf("%q: size %d, want %d", e.rel, got.Size, want.Size)
			}
			first := e.rel
			if e.link != "" {
				first = e.link
			}
			if wantN := uint64(links[first] + 1); got.Nlink != wantN {
				t.Errorf("%q: nlink %d, want %d", e.rel, got.Nlink, wantN)
			}
			if other, ok := inos[got.Ino]; ok && other != first {
				t.Errorf("%q shares inode %d with %q", e.rel, got.Ino, other)
			}
			inos[got.Ino] = first
			a, err := os.ReadFile(join(src, e.rel))
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Errorf("%q: %v", e.rel, err)
			} else if !bytes.Equal(a, b) {
				t.Errorf("%q: content differs (%d bytes, want %d)", e.rel, len(b), len(a))
			}
		case unix.S_IFLNK:
			a, _ := os.Readlink(join(src, e.rel))
			if b, err := os.Readlink(p); err != nil || a != b {
				t.Errorf("%q: symlink of %d bytes (%v), want %d bytes", e.rel, len(b), err, len(a))
			}
		case unix.S_IFDIR:
			names, err := readNames(p)
			if err != nil {
				t.Errorf("%q: %v", e.rel, err)
				continue
			}
			for _, n := range names {
				if !all[join2(e.rel, n)] {
					t.Errorf("%q: lists %q, which the source does not have", e.rel, n)
				}
			}
		}
	}
	// Nothing the walk left out (FIFOs, sockets) is in the image.
	for _, s := range w.skipped {
		if _, err := os.Lstat(join(mnt, s)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%q is in the image (%v); special files are skipped", s, err)
		}
	}
}

// TestImageFallback: where an image cannot be mounted, the base is a
// directory snapshot, and its metadata and the log say why.
func TestImageFallback(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	var logged []string
	m := newTestManager(t, WithLogf(func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) }))
	m.mountImg = func(image, dir string) error { return fmt.Errorf("mount erofs image %s: %w", image, unix.ENODEV) }
	src := gitSource(t)
	ws, err := m.Create(ctx, "fallback", src, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.readBase(mustWS(t, m, "fallback").Base)
	if err != nil {
		t.Fatal(err)
	}
	if b.Image != "" || !strings.Contains(b.NoImage, "no such device") {
		t.Errorf("base image %q, noImage %q: want a directory snapshot and why", b.Image, b.NoImage)
	}
	if _, err := os.Stat(filepath.Join(m.baseDir(b.ID), imageName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("image left beside a directory snapshot: %v", err)
	}
	if got := readString(t, filepath.Join(ws.Path, "README.md")); got != "hello\n" {
		t.Errorf("workspace shows %q", got)
	}
	if !strings.Contains(strings.Join(logged, "\n"), "a directory snapshot instead") {
		t.Errorf("no log line says why: %q", logged)
	}
}

// TestImageAfterReboot: with every mount gone (as after a reboot), Ensure,
// Diff and a further Create mount the base's image again; removing the
// last workspace unmounts and deletes it. A base from before images
// (metadata without the field) keeps working.
func TestImageAfterReboot(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		after func(t *testing.T, m *Manager, id, src string)
	}{
		{"ensure", func(t *testing.T, m *Manager, id, src string) {
			if _, err := m.Ensure(context.Background(), id); err != nil {
				t.Fatal(err)
			}
		}},
		{"diff", func(t *testing.T, m *Manager, id, src string) {
			cs, err := m.Diff(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if len(cs) != 1 || cs[0].Path != "README.md" || cs[0].Kind != Modified {
				t.Errorf("diff = %+v, want README.md modified", cs)
			}
		}},
		{"further_create", func(t *testing.T, m *Manager, id, src string) {
			ws, err := m.Create(context.Background(), id+"-2", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := readString(t, filepath.Join(ws.Path, "main.go")); !strings.HasPrefix(got, "package main") {
				t.Errorf("further workspace shows %q", got)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			m := newTestManager(t)
			src := gitSource(t)
			ws, err := m.Create(ctx, "boot", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := m.readBase(mustWS(t, m, "boot").Base)
			if err != nil {
				t.Fatal(err)
			}
			if b.Image == "" {
				t.Fatalf("base is not an image: %s", b.NoImage)
			}
			writeFile(t, ws.Path, "README.md", "changed\n", 0o644)
			if err := m.Unmount(ctx, "boot"); err != nil {
				t.Fatal(err)
			}
			if err := unmountImage(m.layerDir(b.ID)); err != nil {
				t.Fatal(err)
			}
			if imageMounted(m.layerDir(b.ID)) {
				t.Fatal("image still mounted")
			}
			tt.after(t, m, "boot", src)
			if !imageMounted(m.layerDir(b.ID)) {
				t.Error("image not mounted again")
			}
			if _, err := m.Ensure(ctx, "boot"); err != nil {
				t.Fatal(err)
			}
			if got := readString(t, filepath.Join(ws.Path, "README.md")); got != "changed\n" {
				t.Errorf("after remount: %q", got)
			}
			ids, err := m.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range ids {
				if err := m.Remove(ctx, w.ID); err != nil {
					t.Fatal(err)
				}
			}
			if imageMounted(m.layerDir(b.ID)) || mountedUnder(t, m.root) {
				t.Error("mounts left after the last workspace went")
			}
			if _, err := os.Stat(m.baseDir(b.ID)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("base left: %v", err)
			}
		})
	}
	t.Run("old_directory_base", func(t *testing.T) {
		ctx := context.Background()
		m := newTestManager(t)
		m.noImage.Store(true) // builds a directory base, as before images
		src := gitSource(t)
		if _, err := m.Create(ctx, "old", src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// A new Manager (a later cilo) uses it as it is.
		m2, err := New(m.root, WithLogf(t.Logf))
		if err != nil {
			t.Fatal(err)
		}
		if err := m2.Unmount(ctx, "old"); err != nil {
			t.Fatal(err)
		}
		ws, err := m2.Ensure(ctx, "old")
		if err != nil {
			t.Fatal(err)
		}
		if !mounted.Overlay(ws.Path) || readString(t, filepath.Join(ws.Path, "README.md")) != "hello\n" {
			t.Error("old base not usable")
		}
		if err := m2.Remove(ctx, "old"); err != nil {
			t.Fatal(err)
		}
	})
}

// mountedUnder reports whether anything is mounted below dir.
func mountedUnder(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			return true
		}
	}
	return false
}
