package sandbox

import (
	"context"
	"fmt"
	"io"

	"github.com/cilo-dev/cilo/overlayfs"
)

// Diff lists what the env changed in its workspace.
func (m *Manager) Diff(ctx context.Context, project, name string) ([]overlayfs.Change, error) {
	if _, err := m.Get(ctx, project, name); err != nil {
		return nil, err
	}
	changes, err := m.ws.Diff(ctx, m.workspaceID(project, name))
	if err != nil {
		return nil, fmt.Errorf("diff env %q: %w", name, err)
	}
	return changes, nil
}

// Patch writes the env's changes as a unified diff.
func (m *Manager) Patch(ctx context.Context, project, name string, w io.Writer) error {
	if _, err := m.Get(ctx, project, name); err != nil {
		return err
	}
	if err := m.ws.Patch(ctx, m.workspaceID(project, name), w); err != nil {
		return fmt.Errorf("diff env %q: %w", name, err)
	}
	return nil
}

// MergeBranch is the branch of the source repository that `cilo merge`
// writes the env's commits to.
func MergeBranch(env string) string { return "cilo/" + env }

// Merge fetches the env's commits into the source repository as branch
// cilo/<env>, leaving the source's working tree, index and HEAD alone.
func (m *Manager) Merge(ctx context.Context, project, name string) (string, error) {
	if _, err := m.Get(ctx, project, name); err != nil {
		return "", err
	}
	branch := MergeBranch(name)
	if err := m.ws.Merge(ctx, m.workspaceID(project, name), branch); err != nil {
		return "", fmt.Errorf("merge env %q: %w", name, err)
	}
	return branch, nil
}
