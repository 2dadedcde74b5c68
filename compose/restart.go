package compose

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// RestartTask is how the restart supervisor (package supervise) restarts
// a container after the CLI exited. It holds the env's lock, the one Up,
// Down and Remove hold, so that a restart never revives a container that
// cilo down is stopping, nor replaces a task that Up is replacing. Under
// it, decide gets the container's current labels and its stopped task's
// exit status; when decide says so, RestartTask sets the labels decide
// returns and starts a new task made as Up makes one: the same log file,
// and the network namespace and cgroup of the container's spec. A
// container that is gone, whose env was removed, or whose task is not
// stopped (never started, or started again by Up) is left alone: it
// returns 0 and no error. Otherwise it returns the new task's pid.
func (e *Engine) RestartTask(ctx context.Context, ctr containerd.Container, decide func(labels map[string]string, exitStatus uint32) (map[string]string, bool)) (uint32, error) {
	labels, err := ctr.Labels(ctx)
	if errdefs.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read labels of %s: %w", ctr.ID(), err)
	}
	unlock, err := e.lockExistingEnv(ctx, &state.Env{Project: labels[labelProject], Name: labels[labelEnv]})
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer unlock()
	// Again, now that nobody else changes them.
	labels, err = ctr.Labels(ctx)
	if errdefs.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read labels of %s: %w", ctr.ID(), err)
	}
	task, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("task of %s: %w", ctr.ID(), err)
	}
	st, err := task.Status(ctx)
	if errdefs.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("status of %s: %w", ctr.ID(), err)
	}
	if st.Status != containerd.Stopped {
		return 0, nil
	}
	set, ok := decide(labels, st.ExitStatus)
	if !ok {
		return 0, nil
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return 0, fmt.Errorf("read spec of %s: %w", ctr.ID(), err)
	}
	if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return 0, fmt.Errorf("delete exited task of %s: %w", ctr.ID(), err)
	}
	service := labels[labelService]
	task, err = e.newTask(ctx, ctr, spec, service, labels[labelLog])
	if err != nil {
		return 0, err
	}
	if err := startTask(ctx, ctr, task, set, service); err != nil {
		return 0, err
	}
	return task.Pid(), nil
}
