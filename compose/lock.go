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

// lockEnv serialises Up, Down and Remove of one env across cilo processes
// (two `cilo run` of one env at once must not both create its containers
// and namespaces). The wait polls so that ctx can cancel it.
func (e *Engine) lockEnv(ctx context.Context, env *state.Env) (func(), error) {
	path := e.lockPath(env)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock services of env %q: %w", env.Name, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
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
