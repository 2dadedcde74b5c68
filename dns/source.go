package dns

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// Source produces zones: Run calls update with the first zone and then
// with a new one after every change, until ctx is done.
type Source interface {
	Run(ctx context.Context, update func(*Zone)) error
}

// StateSource builds zones from cilo's state file. The file is only ever
// replaced by rename, so a watch on its directory (inotify on Linux) sees
// every change; a poll of the file's mtime and size backs the watch up.
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

// Run implements [Source]. It fails only if the watch cannot be set up;
// read errors are logged and the last good zone stays in service.
func (s *StateSource) Run(ctx context.Context, update func(*Zone)) error {
	store, err := state.Open(s.dir)
	if err != nil {
		return err
	}
	name := filepath.Base(store.Path())
	w, err := newWatch(s.dir, name)
	if err != nil {
		return fmt.Errorf("watch state directory %s: %w", s.dir, err)
	}
	defer w.Close()
	stop := context.AfterFunc(ctx, func() { w.Close() }) // wakes Wait below
	defer stop()
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
		// A broken state file must not take names of working envs down
		// with the daemon: serve what we have and wait for the next write.
		s.logf("dns: read state: %v (serving no envs until it changes)", err)
	}
	stamp := fileStamp(store.Path())
	for {
		changed, err := w.Wait(s.rescan)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("watch state directory: %w", err)
		}
		if !changed {
			changed = fileStamp(store.Path()) != stamp
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
