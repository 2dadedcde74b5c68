// Package enter runs a command inside an env that is up: in the env's
// network namespace and a private mount namespace holding its resolv.conf
// and hosts, in its workspace, with the CILO_* variables set. It links
// only the config, the state records and system calls, so that cilo's
// front program can take the run path of an existing env without loading
// the rest of cilo.
package enter

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/nsnet/nsfs"
	"github.com/cilo-dev/cilo/overlayfs/mounted"
	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// Request is a command to run inside an env.
type Request struct {
	Argv []string
	// Dir is the caller's working directory; when it lies inside the
	// project, the command starts in the same place inside the workspace.
	Dir    string
	Stdin  *os.File
	Stdout *os.File
	Stderr *os.File
	Env    []string    // the caller's environment; CILO_* are added
	User   *Credential // run as this user (the sudo caller); nil: as cilo
	Rm     bool        // destroy the env when the command exits
}

// Credential is the user a command runs as.
type Credential struct {
	UID, GID uint32
	Groups   []uint32
	Name     string
	Home     string
}

// SudoCredential returns the user who invoked cilo through sudo, or nil
// when cilo was not started by sudo (or by root through sudo).
func SudoCredential(getenv func(string) string) (*Credential, error) {
	suid, sgid := getenv("SUDO_UID"), getenv("SUDO_GID")
	if suid == "" || os.Geteuid() != 0 {
		return nil, nil
	}
	uid, err := strconv.ParseUint(suid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("SUDO_UID %q: %w", suid, err)
	}
	gid, err := strconv.ParseUint(sgid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("SUDO_GID %q: %w", sgid, err)
	}
	if uid == 0 {
		return nil, nil
	}
	c := &Credential{UID: uint32(uid), GID: uint32(gid), Name: getenv("SUDO_USER")}
	if u, err := user.LookupId(suid); err == nil {
		c.Name, c.Home = u.Username, u.HomeDir
		if gids, err := u.GroupIds(); err == nil {
			for _, g := range gids {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					c.Groups = append(c.Groups, uint32(n))
				}
			}
		}
	}
	return c, nil
}

// Ready reports whether env can be entered as it is: its namespace pinned,
// its bridge present, its workspace in place and its run files written.
// After a reboot it is not, and the lifecycle (sandbox) puts back what is
// missing; the front program hands such envs to it.
func Ready(cfg config.Config, env *state.Env) bool {
	if env.Workspace == "" || !nsfs.Exists(env.Netns) {
		return false
	}
	if _, err := os.Stat("/sys/class/net/" + env.Bridge); err != nil {
		return false
	}
	if !mounted.InPlace(env.Workspace, env.WorkspaceMode) {
		return false
	}
	for _, f := range runFiles {
		if _, err := os.Stat(filepath.Join(cfg.EnvRunDir(env.Project, env.Name), f)); err != nil {
			return false
		}
	}
	return true
}

// runFiles are the env's own versions of these files of /etc, written by
// the lifecycle into the env's run directory and bound over /etc.
var runFiles = [...]string{"resolv.conf", "hosts"}

// Run runs the command in an env that is up (see [Ready]). Unless req.Rm
// asks cilo to outlive the command, cilo replaces itself with the command,
// as `ip netns exec` does: signals, the terminal and the exit status are
// the command's own, and nothing is left in between; Run returns only on
// failure. With req.Rm cilo starts the command as its child, forwards
// signals to it and returns its status (128+N when a signal N ended it).
func Run(ctx context.Context, cfg config.Config, env *state.Env, sourceRoot string, req Request) (int, error) {
	c, err := Prepare(cfg, env, sourceRoot, req)
	if err != nil {
		return 127, err
	}
	if !req.Rm {
		return 126, onLockedThread(c.Exec)
	}

	cmd := &exec.Cmd{
		Path:   c.path,
		Args:   req.Argv,
		Dir:    c.dir,
		Env:    c.vars,
		Stdin:  req.Stdin,
		Stdout: req.Stdout,
		Stderr: req.Stderr,
	}
	if req.User != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: req.User.UID, Gid: req.User.GID, Groups: req.User.Groups,
		}}
	}
	// Catch signals before the child exists, so none is lost in between.
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2)
	defer signal.Stop(sigc)

	err = onLockedThread(func() error {
		if err := c.enter(); err != nil {
			return err
		}
		return cmd.Start()
	})
	if err != nil {
		return 126, fmt.Errorf("run %s in env %q: %w", req.Argv[0], env.Name, err)
	}
	done := make(chan struct{})
	defer close(done)
	tty := req.Stdin != nil && isTerminal(req.Stdin)
	go func() {
		for {
			select {
			case s := <-sigc:
				// A terminal already sends ^C and ^\ to the whole
				// foreground group, the command included.
				if tty && (s == unix.SIGINT || s == unix.SIGQUIT) {
					continue
				}
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok {
		return 1, err
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return ws.ExitStatus(), nil
}

// Command is a command ready to run in an env.
type Command struct {
	cfg  config.Config
	env  *state.Env
	argv []string
	path string   // the program, found on the caller's PATH
	dir  string   // where it starts in the workspace
	vars []string // its environment
	user *Credential
}

// Prepare resolves what req needs before anything changes: the program on
// PATH, the directory in the workspace and the environment.
func Prepare(cfg config.Config, env *state.Env, sourceRoot string, req Request) (*Command, error) {
	if len(req.Argv) == 0 {
		return nil, errors.New("no command to run")
	}
	path, err := exec.LookPath(req.Argv[0])
	if err != nil {
		return nil, fmt.Errorf("run %s in env %q: %w", req.Argv[0], env.Name, err)
	}
	return &Command{
		cfg: cfg, env: env, argv: req.Argv, path: path, user: req.User,
		dir:  workDir(env.Workspace, sourceRoot, req.Dir),
		vars: commandEnv(cfg, env, req),
	}, nil
}

// Exec replaces the process with the command, entering the env from the
// calling thread, which the caller must have locked
// (runtime.LockOSThread). It returns only on failure, and then the thread
// may be inside the env's namespaces: the caller must not use it for
// anything but exiting. cilo's front calls it from its main thread, which
// spares it a thread; Run calls it from a fresh one.
func (c *Command) Exec() error {
	err := c.enter()
	if err == nil {
		err = c.become()
	}
	return fmt.Errorf("run %s in env %q: %w", c.argv[0], c.env.Name, err)
}

// become finishes the exec from a thread inside the env: workspace
// directory, the sudo user's credentials, then the program.
func (c *Command) become() error {
	if err := unix.Chdir(c.dir); err != nil {
		return fmt.Errorf("enter workspace %s: %w", c.dir, err)
	}
	if u := c.user; u != nil {
		// Per-thread credential calls are enough: only this thread
		// survives the exec.
		groups := make([]int, len(u.Groups))
		for i, g := range u.Groups {
			groups[i] = int(g)
		}
		if err := unix.Setgroups(groups); err != nil {
			return fmt.Errorf("set groups of %s: %w", u.Name, err)
		}
		if err := unix.Setresgid(int(u.GID), int(u.GID), int(u.GID)); err != nil {
			return fmt.Errorf("set gid %d: %w", u.GID, err)
		}
		if err := unix.Setresuid(int(u.UID), int(u.UID), int(u.UID)); err != nil {
			return fmt.Errorf("set uid %d: %w", u.UID, err)
		}
	}
	return unix.Exec(c.path, c.argv, c.vars)
}

// enter moves the calling thread into the env's network namespace and a
// private mount namespace holding the env's resolv.conf and hosts, as `ip
// netns exec` does. A child started or a program exec'd from the thread
// inherits both.
func (c *Command) enter() error {
	nsf, err := os.Open(nsfs.Path(c.env.Netns))
	if err != nil {
		return fmt.Errorf("open netns of env %q: %w", c.env.Name, err)
	}
	defer nsf.Close()
	if err := unix.Setns(int(nsf.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter netns: %w", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	runDir := c.cfg.EnvRunDir(c.env.Project, c.env.Name)
	for _, f := range runFiles {
		err := unix.Mount(filepath.Join(runDir, f), filepath.Join("/etc", f), "", unix.MS_BIND, "")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("bind env's %s over /etc/%s: %w", f, f, err)
		}
	}
	// /sys/class/net should show the env's interfaces, as under ip netns
	// exec; a host without sysfs keeps the old.
	if unix.Unmount("/sys", unix.MNT_DETACH) == nil {
		unix.Mount(c.env.Netns, "/sys", "sysfs", 0, "")
	}
	return nil
}

// onLockedThread runs fn on a fresh thread that is retired afterwards,
// never handed back to the scheduler in the env's namespaces.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

func commandEnv(cfg config.Config, env *state.Env, req Request) []string {
	vars := map[string]string{
		"CILO_ENV":        env.Name,
		"CILO_PROJECT":    env.Project,
		"CILO_WORKSPACE":  env.Workspace,
		"CILO_BASE_URL":   "http://" + BaseHost(env, cfg.DNSSuffix),
		"CILO_DNS_SUFFIX": cfg.DNSSuffix,
		"CILO_IP":         env.IP.String(),
		"CILO_MODE":       "netns",
	}
	if u := req.User; u != nil {
		vars["USER"], vars["LOGNAME"] = u.Name, u.Name
		if u.Home != "" {
			vars["HOME"] = u.Home
		}
	}
	out := make([]string, 0, len(req.Env)+len(vars))
	for _, kv := range req.Env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := vars[k]; !ok {
			out = append(out, kv)
		}
	}
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	return out
}

// workDir maps the caller's directory inside the source tree to the same
// place in the workspace; anywhere else starts at the workspace root.
func workDir(workspace, sourceRoot, dir string) string {
	if dir == "" || sourceRoot == "" {
		return workspace
	}
	rel, err := filepath.Rel(sourceRoot, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return workspace
	}
	sub := filepath.Join(workspace, rel)
	if fi, err := os.Stat(sub); err == nil && fi.IsDir() {
		return sub
	}
	return workspace
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// BaseHost is the host of CILO_BASE_URL: <project>.<env>.<suffix>.
func BaseHost(env *state.Env, suffix string) string {
	return env.Project + "." + env.Name + "." + suffix
}
