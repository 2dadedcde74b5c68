package overlayfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
)

// gitEnv is the environment git runs with: the caller's, minus variables
// that would point git at another repository than the one asked for.
func gitEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
			"GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
}

// runGit runs git in dir and returns its stdout. safe.directory=* is given
// on the command line (a protected config source) because cilo runs as root
// on repositories that belong to the user.
func runGit(ctx context.Context, dir string, args ...string) ([]byte, error) {
	return runGitAs(ctx, nil, dir, args...)
}

// runGitAs runs git with cred, when not nil, so that what git writes (refs,
// objects) belongs to the repository's owner, not to root.
func runGitAs(ctx context.Context, cred *owner, dir string, args ...string) ([]byte, error) {
	full := append([]string{"-c", "safe.directory=*", "-C", dir}, args...)
	cmd := exec.CommandContext(ctx, "git", full...)
	cmd.Env = gitEnv()
	if cred != nil && os.Geteuid() == 0 && cred.uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: cred.uid, Gid: cred.gid}}
		if u, err := user.LookupId(fmt.Sprint(cred.uid)); err == nil && u.HomeDir != "" {
			cmd.Env = append(cmd.Env, "HOME="+u.HomeDir)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git %s in %s: %w: %s", strings.Join(args, " "), dir, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

type owner struct{ uid, gid uint32 }

func ownerOf(path string) (*owner, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return &owner{uid: st.Uid, gid: st.Gid}, nil
}

// gitLink describes a source whose .git is a file ("gitdir: ..."), as in a
// linked worktree or a submodule.
type gitLink struct {
	gitDir    string // the worktree's own git directory (HEAD, index)
	commonDir string // the repository's shared directory (objects, refs, config)
}

// readGitLink returns the link of src, or nil when src/.git is not a file.
func readGitLink(src string) (*gitLink, error) {
	fi, err := os.Lstat(src + "/.git")
	if err != nil || !fi.Mode().IsRegular() {
		return nil, nil
	}
	b, err := os.ReadFile(src + "/.git")
	if err != nil {
		return nil, fmt.Errorf("read %s/.git: %w", src, err)
	}
	dir, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "gitdir:")
	if !ok {
		return nil, fmt.Errorf("%s/.git: not a gitdir link", src)
	}
	dir = strings.TrimSpace(dir)
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(src, dir)
	}
	l := &gitLink{gitDir: dir, commonDir: dir}
	if c, err := os.ReadFile(dir + "/commondir"); err == nil {
		cd := strings.TrimSpace(string(c))
		if !filepath.IsAbs(cd) {
			cd = filepath.Join(dir, cd)
		}
		l.commonDir = filepath.Clean(cd)
	}
	return l, nil
}

// makePrivateGitDir gives a workspace made from a linked worktree its own
// git directory. The source's .git file points at a git directory shared
// with the main repository, so a commit inside the workspace would move the
// user's branch and index. Instead the workspace gets a standalone
// repository: its HEAD and index copied from the worktree, the refs and
// config copied from the main repository, and the main repository's objects
// borrowed read-only through objects/info/alternates.
func makePrivateGitDir(l *gitLink, dst string, own *owner) error {
	if err := os.MkdirAll(dst+"/objects/info", 0o755); err != nil {
		return fmt.Errorf("create git directory %s: %w", dst, err)
	}
	for _, d := range []string{"objects/pack", "refs/heads", "refs/tags"} {
		if err := os.MkdirAll(dst+"/"+d, 0o755); err != nil {
			return fmt.Errorf("create git directory %s: %w", dst, err)
		}
	}
	if err := os.WriteFile(dst+"/objects/info/alternates", []byte(l.commonDir+"/objects\n"), 0o644); err != nil {
		return fmt.Errorf("write alternates: %w", err)
	}
	for _, f := range []struct{ from, to string }{
		{l.gitDir + "/HEAD", dst + "/HEAD"},
		{l.gitDir + "/index", dst + "/index"},
		{l.commonDir + "/config", dst + "/config"},
		{l.commonDir + "/packed-refs", dst + "/packed-refs"},
		{l.commonDir + "/shallow", dst + "/shallow"},
	} {
		if err := copySmallFile(f.from, f.to); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := copyDirFiles(l.commonDir+"/refs", dst+"/refs"); err != nil {
		return err
	}
	// A submodule's config names its working tree relative to the
	// superproject's git directory; the workspace's .git file says where
	// the working tree is instead.
	if err := dropConfigKey(dst+"/config", "core.worktree"); err != nil {
		return err
	}
	if own != nil && os.Geteuid() == 0 {
		return filepath.Walk(dst, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, int(own.uid), int(own.gid))
		})
	}
	return nil
}

// dropConfigKey removes key (section.name) from the git config file. Only
// a config that mentions the name at all costs a git process: most never
// do, and a create should not pay for a program start it does not need.
func dropConfigKey(file, key string) error {
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	name := key[strings.LastIndexByte(key, '.')+1:]
	if !bytes.Contains(bytes.ToLower(data), []byte(strings.ToLower(name))) {
		return nil
	}
	if _, err := exec.LookPath("git"); err != nil {
		return nil // nobody can use the repository without git anyway
	}
	cmd := exec.Command("git", "config", "--file", file, "--unset-all", key)
	cmd.Env = gitEnv()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 5 {
		return nil // not set
	}
	if err != nil {
		return fmt.Errorf("git config --unset %s in %s: %w: %s", key, file, err, out)
	}
	return nil
}

func copySmallFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return nil
}

func copyDirFiles(from, to string) error {
	return filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(from, p)
		t := filepath.Join(to, rel)
		if fi.IsDir() {
			return os.MkdirAll(t, 0o755)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		return copySmallFile(p, t)
	})
}

// fetchInto fetches HEAD of the repository at from into the repository at
// repo as refs/heads/<branch>. git fetch updates refs and objects only: the
// working tree, index and HEAD of repo stay as they are, and git refuses to
// update the branch repo has checked out.
func fetchInto(ctx context.Context, repo, from, branch string) error {
	if _, err := runGit(ctx, repo, "check-ref-format", "--branch", branch); err != nil {
		return fmt.Errorf("branch name %q: %w", branch, err)
	}
	own, err := ownerOf(repo + "/.git")
	if err != nil {
		return fmt.Errorf("owner of %s: %w", repo, err)
	}
	if _, err := runGitAs(ctx, own, from, "rev-parse", "--verify", "HEAD^{commit}"); err != nil {
		return fmt.Errorf("workspace %s has no commit: %w", from, err)
	}
	_, err = runGitAs(ctx, own, repo, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
		"--no-recurse-submodules", from, "+HEAD:refs/heads/"+branch)
	return err
}
