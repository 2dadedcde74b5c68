//go:build !linux

package overlayfs

import (
	"context"
	"fmt"
	"io"
	"time"
)

// Create is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Create(ctx context.Context, id, source string, o CreateOptions) (*Workspace, error) {
	return nil, fmt.Errorf("create workspace %q: %w", id, ErrUnsupported)
}

// Ensure is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Ensure(ctx context.Context, id string) (*Workspace, error) {
	return nil, fmt.Errorf("mount workspace %q: %w", id, ErrUnsupported)
}

// Unmount is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Unmount(ctx context.Context, id string) error {
	return fmt.Errorf("unmount workspace %q: %w", id, ErrUnsupported)
}

// Remove is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Remove(ctx context.Context, id string) error {
	return fmt.Errorf("remove workspace %q: %w", id, ErrUnsupported)
}

// Diff is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Diff(ctx context.Context, id string) ([]Change, error) {
	return nil, fmt.Errorf("diff workspace %q: %w", id, ErrUnsupported)
}

// Patch is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Patch(ctx context.Context, id string, w io.Writer) error {
	return fmt.Errorf("patch of workspace %q: %w", id, ErrUnsupported)
}

// Merge is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Merge(ctx context.Context, id, branch string) error {
	return fmt.Errorf("merge workspace %q: %w", id, ErrUnsupported)
}

// RunWatcher is not supported outside Linux; see [ErrUnsupported].
func RunWatcher(ctx context.Context, logf func(string, ...any)) error {
	return fmt.Errorf("watch workspace sources: %w", ErrUnsupported)
}

// mountImage is never reached outside Linux (Create fails first); it
// exists so that New builds everywhere.
func mountImage(image, dir string) error {
	return fmt.Errorf("mount image %s: %w", image, ErrUnsupported)
}

// readBootID is never reached outside Linux, like mountImage.
func readBootID() (string, error) { return "", ErrUnsupported }

// Unflushed is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Unflushed(ctx context.Context, grace time.Duration) ([]string, error) {
	return nil, fmt.Errorf("list unflushed bases: %w", ErrUnsupported)
}

// Flush is not supported outside Linux; see [ErrUnsupported].
func (m *Manager) Flush(ctx context.Context, id string) error {
	return fmt.Errorf("flush base %s: %w", id, ErrUnsupported)
}
