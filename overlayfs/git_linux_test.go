package overlayfs

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const testUID = 4242

// openUp makes every parent of p traversable, so a test can act as an
// unprivileged owner inside t.TempDir (which is 0700).
func openUp(t *testing.T, p string) {
	t.Helper()
	for d := p; d != "/" && d != "."; d = filepath.Dir(d) {
		if strings.HasPrefix(d, os.TempDir()+"/") {
			os.Chmod(d, 0o755)
		}
	}
}

func chownTree(t *testing.T, dir string, uid int) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// gitAs runs git in dir as uid, as an agent inside an env would.
func gitAs(t *testing.T, uid int, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.email=agent@example.com", "-c", "user.name=agent"}, args...)...)
	home := t.TempDir()
	os.Chown(home, uid, uid)
	openUp(t, home)
	cmd.Env = append(gitEnv(), "HOME="+home)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v in %s as %d: %v: %s", args, dir, uid, err, out)
	}
	return strings.TrimSpace(string(out))
}

func writeAs(t *testing.T, uid int, p, data string) {
	t.Helper()
	writeFile(t, filepath.Dir(p), filepath.Base(p), data, 0o644)
	if err := os.Lchown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// TestSourceUntouched runs a whole env life on a user's repository with
// dirty and untracked files and checks the source never changes, while
// the env is a real repository whose commit comes home as a branch.
func TestSourceUntouched(t *testing.T) {
	requireRoot(t)
	for _, mode := range []Mode{ModeOverlay, ModeCopy} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := context.Background()
			src := gitSource(t)
			writeFile(t, src, "main.go", "package main\n\n// dirty\nfunc main() {}\n", 0o644)
			writeFile(t, src, "notes/untracked.txt", "mine\n", 0o644)
			chownTree(t, src, testUID)
			openUp(t, src)
			m := newTestManager(t, WithForceMode(mode))
			openUp(t, m.root)
			before := hashTree(t, src)
			head := gitRun(t, src, "rev-parse", "HEAD")

			ws, err := m.Create(ctx, "life", src, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := readString(t, filepath.Join(ws.Path, "main.go")); !strings.Contains(got, "dirty") {
				t.Errorf("workspace lacks the source's dirty edit: %q", got)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(ws.Path, &st); err != nil || st.Uid != testUID {
				t.Fatalf("workspace root owner = %d (%v), want %d", st.Uid, err, testUID)
			}
			// The user works through the workspace, never on the layers.
			if mode == ModeOverlay {
				for _, p := range []string{ws.Layers[0], filepath.Dir(mustWS(t, m, "life").Upper)} {
					ls := exec.Command("ls", p)
					ls.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: testUID, Gid: testUID}}
					if out, err := ls.CombinedOutput(); err == nil {
						t.Errorf("user can list %s: %s", p, out)
					}
				}
			}
			// Run: the agent edits, builds and commits as the user.
			writeAs(t, testUID, filepath.Join(ws.Path, "feature.go"), "package main\n\nfunc feature() {}\n")
			writeAs(t, testUID, filepath.Join(ws.Path, "docs/guide.md"), "one\nTWO\nthree\n")
			if err := os.Remove(filepath.Join(ws.Path, "README.md")); err != nil {
				t.Fatal(err)
			}
			gitAs(t, testUID, ws.Path, "add", "-A")
			gitAs(t, testUID, ws.Path, "commit", "-qm", "agent work")
			envHead := gitAs(t, testUID, ws.Path, "rev-parse", "HEAD")

			changes, err := m.Diff(ctx, "life")
			if err != nil {
				t.Fatal(err)
			}
			want := []Change{{"README.md", Deleted}, {"docs/guide.md", Modified}, {"feature.go", Added}}
			if len(changes) != len(want) {
				t.Fatalf("diff = %v, want %v", changes, want)
			}
			for i := range want {
				if changes[i] != want[i] {
					t.Errorf("diff[%d] = %v, want %v", i, changes[i], want[i])
				}
			}
			var patch bytes.Buffer
			if err := m.Patch(ctx, "life", &patch); err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"-two\n+TWO\n", "+++ b/feature.go", "deleted file mode 100644", "--- a/README.md\n+++ /dev/null"} {
				if !strings.Contains(patch.String(), s) {
					t.Errorf("patch lacks %q:\n%s", s, patch.String())
				}
			}
			// The patch applies to a copy of the source and gives the env's files.
			cp := filepath.Join(t.TempDir(), "copy")
			if out, err := exec.Command("cp", "-a", src, cp).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v: %s", err, out)
			}
			apply := exec.Command("git", "apply", "-")
			apply.Dir, apply.Stdin = cp, bytes.NewReader(patch.Bytes())
			if out, err := apply.CombinedOutput(); err != nil {
				t.Fatalf("git apply: %v: %s\n%s", err, out, patch.String())
			}
			for _, f := range []string{"feature.go", "docs/guide.md"} {
				if readString(t, filepath.Join(cp, f)) != readString(t, filepath.Join(ws.Path, f)) {
					t.Errorf("%s after git apply differs from the env's", f)
				}
			}
			if _, err := os.Stat(filepath.Join(cp, "README.md")); !os.IsNotExist(err) {
				t.Errorf("README.md survived the patch: %v", err)
			}
			if err := m.Merge(ctx, "life", "cilo/life"); err != nil {
				t.Fatal(err)
			}
			if got := gitRun(t, src, "rev-parse", "cilo/life"); got != envHead {
				t.Errorf("branch cilo/life = %s, want the env's HEAD %s", got, envHead)
			}
			if got := gitRun(t, src, "rev-parse", "HEAD"); got != head {
				t.Errorf("source HEAD moved: %s, was %s", got, head)
			}
			// What the merge wrote belongs to the repository's owner.
			objs := filepath.Join(src, ".git", "objects", envHead[:2], envHead[2:])
			if err := syscall.Stat(objs, &st); err == nil && st.Uid != testUID {
				t.Errorf("fetched object owned by %d, want %d", st.Uid, testUID)
			}
			if err := m.Remove(ctx, "life"); err != nil {
				t.Fatal(err)
			}
			if after := hashTree(t, src); after != before {
				t.Errorf("source tree changed across the env's life")
			}
		})
	}
}

// TestWorktreeSource makes an env of a linked worktree: the env commits in
// its own git directory and the worktree's HEAD and index stay put.
func TestWorktreeSource(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	main := gitSource(t)
	wt := filepath.Join(t.TempDir(), "wt")
	gitRun(t, main, "worktree", "add", "-q", "-b", "feature", wt)
	writeFile(t, wt, "wip.txt", "work in progress\n", 0o644)
	before := hashTree(t, wt)
	mainBefore := hashTree(t, main)
	m := newTestManager(t)
	ws, err := m.Create(ctx, "wt", wt, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(ws.Path, ".git"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf(".git in workspace: %v, %v; want a file", fi, err)
	}
	if got := gitRun(t, ws.Path, "rev-parse", "--abbrev-ref", "HEAD"); got != "feature" {
		t.Errorf("workspace branch = %q, want feature", got)
	}
	if got := gitRun(t, ws.Path, "status", "--porcelain"); got != "?? wip.txt" {
		t.Errorf("workspace status = %q, want the untracked wip.txt", got)
	}
	writeFile(t, ws.Path, "done.txt", "done\n", 0o644)
	gitRun(t, ws.Path, "add", "-A")
	gitRun(t, ws.Path, "commit", "-qm", "from the env")
	if err := m.Merge(ctx, "wt", "cilo/wt"); err != nil {
		t.Fatal(err)
	}
	if got := gitRun(t, main, "log", "-1", "--format=%s", "cilo/wt"); got != "from the env" {
		t.Errorf("merged branch tip = %q", got)
	}
	if err := m.Remove(ctx, "wt"); err != nil {
		t.Fatal(err)
	}
	if hashTree(t, wt) != before {
		t.Error("worktree changed")
	}
	if hashTree(t, main) != mainBefore {
		t.Error("main repository's working tree, index or HEAD changed")
	}
}

// TestMergeRefusesCheckedOutBranch: merge must never move the branch the
// source has checked out.
func TestMergeRefusesCheckedOutBranch(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	src := gitSource(t)
	m := newTestManager(t)
	ws, err := m.Create(ctx, "co", src, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, ws.Path, "x.txt", "x\n", 0o644)
	gitRun(t, ws.Path, "add", "-A")
	gitRun(t, ws.Path, "commit", "-qm", "x")
	head := gitRun(t, src, "rev-parse", "HEAD")
	tests := []struct{ name, branch string }{
		{"checked_out_branch", "main"},
		{"invalid_name", "cilo/..bad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := m.Merge(ctx, "co", tt.branch); err == nil {
				t.Fatalf("merge into %q succeeded", tt.branch)
			}
			if got := gitRun(t, src, "rev-parse", "HEAD"); got != head {
				t.Fatalf("source HEAD moved to %s", got)
			}
		})
	}
}

// TestSubmoduleSource: a submodule checkout's .git file points into the
// superproject; the env still gets a working repository of its own.
func TestSubmoduleSource(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	lib := gitSource(t)
	super := gitSource(t)
	gitRun(t, super, "-c", "protocol.file.allow=always", "submodule", "add", "-q", lib, "lib")
	gitRun(t, super, "commit", "-qm", "add lib")
	sub := filepath.Join(super, "lib")
	before := hashTree(t, sub)
	m := newTestManager(t)
	ws, err := m.Create(ctx, "sub", sub, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := gitRun(t, ws.Path, "rev-parse", "--show-toplevel"); got != ws.Path {
		t.Errorf("env's git top level = %q, want %q", got, ws.Path)
	}
	if got := gitRun(t, ws.Path, "status", "--porcelain"); got != "" {
		t.Errorf("fresh env of a submodule is dirty: %q", got)
	}
	writeFile(t, ws.Path, "env.txt", "env\n", 0o644)
	gitRun(t, ws.Path, "add", "-A")
	gitRun(t, ws.Path, "commit", "-qm", "env")
	if err := m.Merge(ctx, "sub", "cilo/sub"); err != nil {
		t.Fatal(err)
	}
	if got := gitRun(t, sub, "log", "-1", "--format=%s", "cilo/sub"); got != "env" {
		t.Errorf("merged tip = %q", got)
	}
	if hashTree(t, sub) != before {
		t.Error("submodule checkout changed")
	}
}

// TestDropConfigKey: core.worktree goes whatever its case, everything else
// stays, and a config that never names it is left as it is.
func TestDropConfigKey(t *testing.T) {
	tests := []struct {
		name, config, want string
	}{
		{"absent", "[core]\n\tbare = false\n", "[core]\n\tbare = false\n"},
		{"set", "[core]\n\tbare = false\n\tworktree = ../../lib\n", "[core]\n\tbare = false\n"},
		{"mixed_case", "[Core]\n\tWorkTree = ../../lib\n\tbare = false\n", "[Core]\n\tbare = false\n"},
		{"other_key_alike", "[extensions]\n\tworktreeConfig = true\n", "[extensions]\n\tworktreeConfig = true\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "config")
			if err := os.WriteFile(f, []byte(tt.config), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := dropConfigKey(f, "core.worktree"); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("config after dropping core.worktree:\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
	if err := dropConfigKey(filepath.Join(t.TempDir(), "none"), "core.worktree"); err != nil {
		t.Errorf("missing config: %v", err)
	}
}
