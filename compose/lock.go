package compose

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// lockEnv serialises Up, Down and Remove of one env, and the supervisor's
// restarts in it, across cilo processes (two `cilo run` of one env at once
// must not both create its containers and namespaces; a restart must not
// revive a container that Down is stopping). The wait polls so that ctx
// can cancel it.
func (e *Engine) lockEnv(ctx context.Context, env *state.Env) (func(), error) {
	path := e.lockPath(env)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock services of env %q: %w", env.Name, err)
	}
	return e.flockEnv(ctx, env, os.O_CREATE)
}

// lockExistingEnv is lockEnv for an env whose services may be gone: it
// fails with fs.ErrNotExist, rather than leave a lock file behind, when
// Remove took the env's lock file away.
func (e *Engine) lockExistingEnv(ctx context.Context, env *state.Env) (func(), error) {
	return e.flockEnv(ctx, env, 0)
}

func (e *Engine) flockEnv(ctx context.Context, env *state.Env, create int) (func(), error) {
	f, err := os.OpenFile(e.lockPath(env), create|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock services of env %q: %w", env.Name, err)
	}
	for delay := time.Millisecond; ; {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock services of env %q: %w", env.Name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another cilo working on the services of env %q: %w", env.Name, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

func (e *Engine) lockPath(env *state.Env) string {
	return filepath.Join(e.opts.RunDir, "compose", env.Project, env.Name+".lock")
}
