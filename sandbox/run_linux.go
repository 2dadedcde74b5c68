package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/enter"
)

// Run runs a command inside env name of project, creating the env and
// starting its services first when needed, and returns the command's exit
// status (128+N when a signal N ended it).
func (m *Manager) Run(ctx context.Context, p *config.Project, name string, req enter.Request) (code int, err error) {
	if len(req.Argv) == 0 {
		return 0, errors.New("no command to run")
	}
	env, err := m.Up(ctx, p, name)
	if err != nil {
		return 0, err
	}
	if req.Rm {
		defer func() {
			if derr := m.Destroy(context.WithoutCancel(ctx), env.Project, env.Name); derr != nil {
				err = errors.Join(err, fmt.Errorf("remove env after --rm: %w", derr))
			}
		}()
	}
	return enter.Run(ctx, m.cfg, env, p.Root, req)
}
