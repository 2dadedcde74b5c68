//go:build !linux

package dns

import (
	"errors"
	"sync"
	"time"
)

// watch polls where there is no inotify: Wait returns false every 50 ms
// and the caller compares the directory's mtime and size, which keeps changes
// well within the 100 ms budget.
type watch struct {
	once   sync.Once
	closed chan struct{}
}

func newWatch(dir string, match func(name string) bool) (*watch, error) {
	return &watch{closed: make(chan struct{})}, nil
}

// Wait returns false after at most 50 ms; it fails once Close was called.
func (w *watch) Wait(timeout time.Duration) (bool, error) {
	select {
	case <-w.closed:
		return false, errors.New("watch closed")
	case <-time.After(min(timeout, 50*time.Millisecond)):
		return false, nil
	}
}

// Close releases the watch.
func (w *watch) Close() error {
	w.once.Do(func() { close(w.closed) })
	return nil
}
