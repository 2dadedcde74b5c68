package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// Source produces zones: Run calls update with the first zone and then
// with a new one after every change, until ctx is done.
type Source interface {
	Run(ctx context.Context, update func(*Zone)) error
}

// StateSource builds zones from cilo's state file. The file is only ever
// replaced by rename, so an inotify watch on its directory sees every
// change as one IN_MOVED_TO; a slow poll (rescan) backs the watch up.
type StateSource struct {
	dir    string
	suffix string
	rescan time.Duration
	logf   func(string, ...any)
}

// NewStateSource watches the state file in dir and serves suffix.
func NewStateSource(dir, suffix string, logf func(string, ...any)) *StateSource {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &StateSource{dir: dir, suffix: suffix, rescan: 5 * time.Second, logf: logf}
}

// Run implements [Source]. It fails only if the first read or the watch
// cannot be set up; later read errors are logged and the last good zone
// stays in service.
func (s *StateSource) Run(ctx context.Context, update func(*Zone)) error {
	store, err := state.Open(s.dir)
	if err != nil {
		return err
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("watch state directory: %w", err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	if _, err := unix.InotifyAddWatch(fd, s.dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_DELETE|unix.IN_MOVED_FROM); err != nil {
		return fmt.Errorf("watch state directory %s: %w", s.dir, err)
	}
	serial := uint32(time.Now().Unix())
	load := func() error {
		st, err := store.Read(ctx)
		if err != nil {
			return err
		}
		envs := make([]*state.Env, 0, len(st.Envs))
		for _, e := range st.Envs {
			envs = append(envs, e)
		}
		serial++
		update(NewZone(s.suffix, envs, serial))
		return nil
	}
	if err := load(); err != nil {
		return err
	}
	stamp := fileStamp(store.Path())
	go func() {
		<-ctx.Done()
		f.SetReadDeadline(time.Now()) // wakes the Read below
	}()
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	name := filepath.Base(store.Path())
	for {
		f.SetReadDeadline(time.Now().Add(s.rescan))
		n, err := f.Read(buf)
		if ctx.Err() != nil {
			return nil
		}
		changed := false
		switch {
		case err == nil:
			changed = touches(buf[:n], name)
		case errors.Is(err, os.ErrDeadlineExceeded):
			changed = fileStamp(store.Path()) != stamp
		default:
			return fmt.Errorf("watch state directory: %w", err)
		}
		if !changed {
			continue
		}
		stamp = fileStamp(store.Path())
		if err := load(); err != nil {
			s.logf("dns: reload state: %v (keeping the previous zone)", err)
		}
	}
}

// touches reports whether any inotify event in b names the file name.
func touches(b []byte, name string) bool {
	for len(b) >= unix.SizeofInotifyEvent {
		// struct inotify_event: wd, mask, cookie, len, then the name.
		end := unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(b[12:16]))
		if end > len(b) {
			return false
		}
		n := b[unix.SizeofInotifyEvent:end]
		for i, c := range n {
			if c == 0 {
				n = n[:i]
				break
			}
		}
		if string(n) == name {
			return true
		}
		b = b[end:]
	}
	return false
}
