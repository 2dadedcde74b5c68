package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Command is the hidden command of cilo-compose that runs [Run].
const Command = "__supervise"

// ErrAlreadyRunning is returned by [Run] when another supervisor holds the
// run dir's pid file.
var ErrAlreadyRunning = errors.New("restart supervisor already running")

// The supervisor's files in a run dir: one supervisor per run dir, that
// is per cilo configuration.
const (
	// pidFile holds the running supervisor's pid; it keeps an exclusive
	// flock on it for as long as it runs.
	pidFile = "supervise.pid"
	// launchFile serialises launchers, so that they start one supervisor.
	launchFile = "supervise.launch.lock"
	// holdFile is held shared by every cilo up that creates containers
	// with a restart policy; a supervisor exits for lack of work only
	// when it can take it exclusively, so it never exits under an up.
	holdFile = "supervise.hold.lock"
)

// Launcher starts the supervisor on demand, as a background process in its
// own session, so that it outlives the cilo command that needed it.
type Launcher struct {
	RunDir  string   // the supervisor's pid and lock files live here
	LogFile string   // the supervisor's output is appended here
	Command []string // its command line; empty: this executable with [Command]
	Env     []string // added to this process's environment (cilo's config)
}

// Acquire makes sure a supervisor runs, starting one if none does, and
// keeps it from exiting for lack of work until release is called: cilo up
// holds it while it creates containers with a restart policy, which the
// supervisor may not have seen yet. Concurrent callers, in one process or
// several, start at most one supervisor. When one runs already, Acquire
// costs two opens and two flocks.
func (l *Launcher) Acquire(ctx context.Context) (release func(), err error) {
	if err := os.MkdirAll(l.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("start the restart supervisor: %w", err)
	}
	release, err = flock(ctx, filepath.Join(l.RunDir, holdFile), unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("start the restart supervisor: %w", err)
	}
	if err := l.ensure(ctx); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

func (l *Launcher) ensure(ctx context.Context) error {
	pid := filepath.Join(l.RunDir, pidFile)
	if running(pid) {
		return nil
	}
	unlock, err := flock(ctx, filepath.Join(l.RunDir, launchFile), unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("start the restart supervisor: %w", err)
	}
	defer unlock()
	if running(pid) {
		return nil
	}
	return l.spawn(ctx, pid)
}

func (l *Launcher) spawn(ctx context.Context, pid string) error {
	argv := l.Command
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("start the restart supervisor: find this program's binary: %w", err)
		}
		argv = []string{exe, Command}
	}
	if err := os.MkdirAll(filepath.Dir(l.LogFile), 0o755); err != nil {
		return fmt.Errorf("start the restart supervisor: %w", err)
	}
	log, err := os.OpenFile(l.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start the restart supervisor: open its log: %w", err)
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), l.Env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives the terminal and its ^C
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the restart supervisor %s: %w", argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for !running(pid) {
		select {
		case err := <-exited:
			if running(pid) { // lost a race with another launcher's child
				return nil
			}
			return fmt.Errorf("restart supervisor exited at once (%v): see %s", err, l.LogFile)
		case <-ctx.Done():
			return fmt.Errorf("restart supervisor did not start within 5 s (%w): see %s", ctx.Err(), l.LogFile)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// lockPID takes the supervisor's single-instance lock in dir and writes
// its pid. release removes the pid file, then drops the lock.
func lockPID(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	path := filepath.Join(dir, pidFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open supervisor pid file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			b, _ := os.ReadFile(path)
			return nil, fmt.Errorf("pid %s holds %s: %w", strings.TrimSpace(string(b)), path, ErrAlreadyRunning)
		}
		return nil, fmt.Errorf("lock supervisor pid file: %w", err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("write supervisor pid file: %w", err)
	}
	return func() {
		os.Remove(path)
		f.Close()
	}, nil
}

// running reports whether a supervisor holds the pid file's lock.
func running(pidPath string) bool {
	f, err := os.Open(pidPath)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return false
	}
	return true
}

// flock takes a flock of kind how (LOCK_SH, LOCK_EX) on path, creating the
// file, polling so that ctx can end the wait.
func flock(ctx context.Context, path string, how int) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// tryFlock takes an exclusive flock on path at once, or reports false.
func tryFlock(path string) (unlock func(), ok bool) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, false
	}
	return func() { f.Close() }, true
}
