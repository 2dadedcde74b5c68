package overlayfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts overlays and keeps file ownership")
	}
}

// newTestManager returns a Manager on a fresh root, with watchers as the
// CLI has them (WithWatcher(nil) turns them off), whose workspaces are all
// removed (and unmounted) and watchers gone when the test ends, even when
// it fails.
func newTestManager(t *testing.T, opts ...Opt) *Manager {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	opts = append([]Opt{WithLogf(t.Logf), withTestWatcher()}, opts...)
	m, err := New(root, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanupManager(t, m) })
	return m
}

// withTestWatcher starts this test binary as the watcher process.
func withTestWatcher() Opt {
	return WithWatcher(func() *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), watcherEnv+"=1")
		return cmd
	})
}

// cleanupManager removes every workspace, which stops the watchers. A
// watcher still running after that is an error, and is killed.
func cleanupManager(t *testing.T, m *Manager) {
	ents, _ := os.ReadDir(filepath.Join(m.root, dirWS))
	for _, e := range ents {
		unmount(filepath.Join(m.root, dirWS, e.Name(), "m"), true)
		if err := m.Remove(context.Background(), e.Name()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	if pids := waitWatchersGone(m.root, 5*time.Second); len(pids) > 0 {
		t.Errorf("cleanup: watchers still running with no env left: %v", pids)
		for _, pid := range pids {
			if pid > 0 {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
		waitWatchersGone(m.root, 5*time.Second)
	}
	if t.Failed() {
		if b, err := os.ReadFile(m.watchPath("", "log")); err == nil {
			t.Logf("watcher log:\n%s", b)
		}
	}
}

// watcherPIDs returns the pids of the watchers running under root: those
// holding their lock.
func watcherPIDs(root string) []int {
	locks, _ := filepath.Glob(filepath.Join(root, dirWatch, "*.lock"))
	var pids []int
	for _, l := range locks {
		fd, err := lockFD(l, true)
		if err == nil {
			unix.Close(fd)
			continue
		}
		b, _ := os.ReadFile(l)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			pid = -1 // starting: its pid is not written yet
		}
		pids = append(pids, pid)
	}
	return pids
}

func waitWatchersGone(root string, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		pids := watcherPIDs(root)
		if len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitWatcher waits until the watcher of src answers, so that the next
// Create meets it whatever the machine's load.
func waitWatcher(t *testing.T, m *Manager, src string, excludes []string) {
	t.Helper()
	key := watchKey(src, excludes)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := m.askWatcher(context.Background(), key, watchRequest{Op: "state"}); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("no watcher of %s answers: %v", src, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gitRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.email=t@example.com", "-c", "user.name=t",
		"-c", "safe.directory=*", "-c", "init.defaultBranch=main"}, args...)...)
	cmd.Env = gitEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v in %s: %v: %s", args, dir, err, out)
	}
	return strings.TrimSpace(string(out))
}

// writeFile writes data to dir/rel, making parents.
func writeFile(t *testing.T, dir, rel, data string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// richTree fills dir with every kind of entry a snapshot must keep or skip.
// It returns the paths of the FIFO and socket, which must be skipped.
func richTree(t *testing.T, dir string) (skipped []string) {
	t.Helper()
	writeFile(t, dir, "README.md", "hello\n", 0o644)
	writeFile(t, dir, "bin/run.sh", "#!/bin/sh\necho hi\n", 0o755)
	writeFile(t, dir, "secret/key", "k", 0o600)
	writeFile(t, dir, "with space/a file.txt", "space\n", 0o644)
	writeFile(t, dir, "ünïcødé/文件.txt", "unicode\n", 0o644)
	writeFile(t, dir, "odd/new\nline", "newline\n", 0o644)
	writeFile(t, dir, "src/main.go", "package main\n", 0o644)
	if err := os.MkdirAll(filepath.Join(dir, "empty/dir"), 0o750); err != nil {
		t.Fatal(err)
	}
	// More entries in one directory than one copy task takes, and a
	// directory that is read-only once filled.
	for i := 0; i < 3*copyChunk+1; i++ {
		writeFile(t, dir, fmt.Sprintf("many/f%03d", i), fmt.Sprint(i), 0o640)
	}
	writeFile(t, dir, "read-only/inside.txt", "ro\n", 0o444)
	if err := os.Chmod(filepath.Join(dir, "read-only"), 0o555); err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct{ target, name string }{
		{"README.md", "link-file"},
		{"src", "link-dir"},
		{"does/not/exist", "link-dangling"},
		{"/etc/hostname", "link-absolute"},
	} {
		if err := os.Symlink(l.target, filepath.Join(dir, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(dir, "README.md"), filepath.Join(dir, "src/hardlink.md")); err != nil {
		t.Fatal(err)
	}
	// A large file: several copy_file_range rounds' worth is not needed, but
	// more than one page cache batch is.
	big := make([]byte, 48<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(filepath.Join(dir, "secret/key"), 1234, 2345); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(filepath.Join(dir, "link-file"), 1234, 2345); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	if err := os.Chtimes(filepath.Join(dir, "src/main.go"), old, old); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "a-fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	t.Cleanup(func() { l.Close() })
	if err := os.Chtimes(filepath.Join(dir, "empty/dir"), old, old); err != nil {
		t.Fatal(err)
	}
	return []string{"a-fifo", "a.sock"}
}

// treeRecord is what hashTree sees of one entry.
type treeRecord struct {
	mode     uint32
	uid, gid uint32
	mtime    int64
	content  string // file content hash or symlink target
}

// readTree records every entry of dir (its .git excluded when noGit).
func readTree(t *testing.T, dir string, noGit bool) map[string]treeRecord {
	t.Helper()
	out := map[string]treeRecord{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if noGit && (rel == ".git" || strings.HasPrefix(rel, ".git/")) {
			if fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		r := treeRecord{mode: st.Mode, uid: st.Uid, gid: st.Gid}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			r.mtime = st.Mtim.Nano()
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			io.Copy(h, f)
			f.Close()
			r.content = hex.EncodeToString(h.Sum(nil))
		case unix.S_IFLNK:
			r.mtime = st.Mtim.Nano()
			r.content, _ = os.Readlink(p)
		case unix.S_IFDIR:
			if rel != "." {
				r.mtime = st.Mtim.Nano()
			}
		}
		out[rel] = r
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hashTree digests dir's working tree; for a git source also its HEAD,
// index and status, the parts a user would notice if touched.
func hashTree(t *testing.T, dir string) string {
	t.Helper()
	rec := readTree(t, dir, true)
	keys := make([]string, 0, len(rec))
	for k := range rec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%q %+v\n", k, rec[k])
	}
	if _, err := os.Lstat(filepath.Join(dir, ".git")); err == nil {
		gitDir := gitRun(t, dir, "rev-parse", "--absolute-git-dir")
		for _, f := range []string{"HEAD", "index"} {
			b, err := os.ReadFile(filepath.Join(gitDir, f))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			h.Write(b)
		}
		fmt.Fprintln(h, gitRun(t, dir, "--no-optional-locks", "status", "--porcelain", "-uall"))
		fmt.Fprintln(h, gitRun(t, dir, "symbolic-ref", "-q", "HEAD"))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// gitSource makes a git repository with a commit under a new temp dir.
func gitSource(t *testing.T) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src repo")
	writeFile(t, src, "README.md", "hello\n", 0o644)
	writeFile(t, src, "main.go", "package main\n\nfunc main() {}\n", 0o644)
	writeFile(t, src, "scripts/build.sh", "#!/bin/sh\ngo build\n", 0o755)
	writeFile(t, src, "docs/guide.md", "one\ntwo\nthree\n", 0o644)
	gitRun(t, src, "init", "-q")
	gitRun(t, src, "add", "-A")
	gitRun(t, src, "commit", "-qm", "initial")
	return src
}

func readString(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func errorsIsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
