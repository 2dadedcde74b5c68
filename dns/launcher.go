package dns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Launcher starts the DNS daemon on demand, where no service manager runs
// it: `cilo create` and `cilo run` call [Launcher.EnsureRunning] so that a
// user who never ran `cilo init` still gets names.
type Launcher struct {
	cfg     Config
	exe     string
	timeout time.Duration
}

// NewLauncher returns a launcher that runs `exe dns serve` with cfg passed
// through the CILO_* variables.
func NewLauncher(cfg Config, exe string) *Launcher {
	return &Launcher{cfg: cfg, exe: exe, timeout: 5 * time.Second}
}

// EnsureRunning returns once a daemon answers on cfg.Addr, starting one if
// none holds the pidfile lock: through systemd when `cilo init` installed
// the unit, else as a background process (own session, output appended to
// [Config.LogFile]). Concurrent callers, in one process or several, start
// at most one daemon: they serialise on a launch lock, and a second daemon
// would exit anyway on the pidfile lock.
//
// The common case, a daemon already serving, costs an open, a flock and a
// stat, no query: `cilo run` calls this every time.
func (l *Launcher) EnsureRunning(ctx context.Context) error {
	if _, ok := running(l.cfg); ok {
		if _, err := os.Stat(l.cfg.StatusFile()); err == nil {
			return nil // written once the daemon listens and has a zone
		}
		return l.waitReady(ctx, nil)
	}
	unlock, err := l.launchLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if _, ok := running(l.cfg); ok {
		return l.waitReady(ctx, nil)
	}
	if rec, err := readInitRecord(l.cfg); err == nil && rec.Unit != "" && systemdRunning("/") {
		if err := systemctl(ctx, "start", unitName); err != nil {
			return fmt.Errorf("start dns server: %w", err)
		}
		return l.waitReady(ctx, nil)
	}
	return l.spawn(ctx)
}

func (l *Launcher) spawn(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(l.cfg.LogFile()), 0o755); err != nil {
		return fmt.Errorf("start dns server: %w", err)
	}
	log, err := os.OpenFile(l.cfg.LogFile(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start dns server: open log: %w", err)
	}
	defer log.Close()
	cmd := exec.Command(l.exe, "dns", "serve")
	cmd.Env = withEnv(os.Environ(), l.cfg.environ())
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // survives the terminal and its ^C
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dns server %s: %w", l.exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := l.waitReady(ctx, exited); err != nil {
		return fmt.Errorf("%w (log: %s)", err, l.cfg.LogFile())
	}
	return nil
}

// withEnv is env with the variables in set replacing those of the same
// name: the child gets the launcher's config whatever the caller's
// environment says.
func withEnv(env, set []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.ContainsFunc(set, func(s string) bool { return strings.HasPrefix(s, name+"=") }) {
			out = append(out, kv)
		}
	}
	return append(out, set...)
}

func (l *Launcher) waitReady(ctx context.Context, exited <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := probe(pctx, l.cfg.Addr, l.cfg.Suffix)
		pcancel()
		if err == nil {
			return nil
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("dns server exited before answering: %v", werr)
		case <-ctx.Done():
			return fmt.Errorf("dns server not answering on %s: %w", l.cfg.Addr, errors.Join(err, ctx.Err()))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (l *Launcher) launchLock(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(l.cfg.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(l.cfg.RunDir, "dns.launch.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open dns launch lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock dns launch lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for dns launch lock: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
