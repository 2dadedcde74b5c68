package dns

import (
	"context"
	"fmt"
	"time"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// Source produces zones: Run calls update with the first zone and then
// with a new one after every change, until ctx is done.
type Source interface {
	Run(ctx context.Context, update func(*Zone)) error
}

// StateSource builds zones from cilo's state. Env records are only ever
// replaced by rename or removed, so a watch on their directory (inotify on
// Linux) sees every change; a poll of the directory's mtime backs the
// watch up.
type StateSource struct {
	dir    string
	suffix string
	rescan time.Duration
	// settle is the least time between two reloads: a burst of writes
	// (twenty parallel creates write twice each) costs one reload per
	// window, not one per write, while a lone write is served at once.
	settle time.Duration
	logf   func(string, ...any)
}

// NewStateSource watches the state in dir and serves suffix.
func NewStateSource(dir, suffix string, logf func(string, ...any)) *StateSource {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &StateSource{dir: dir, suffix: suffix, rescan: 5 * time.Second, settle: 20 * time.Millisecond, logf: logf}
}

// Run implements [Source]. It fails only if the watch cannot be set up;
// read errors are logged and the last good zone stays in service.
func (s *StateSource) Run(ctx context.Context, update func(*Zone)) error {
	store, err := state.Open(s.dir)
	if err != nil {
		return err
	}
	w, err := newWatch(store.EnvsDir(), state.IsRecord)
	if err != nil {
		return fmt.Errorf("watch state directory %s: %w", store.EnvsDir(), err)
	}
	defer w.Close()
	stop := context.AfterFunc(ctx, func() { w.Close() }) // wakes Wait below
	defer stop()
	serial := uint32(time.Now().Unix())
	// Every reload reads the whole state; the rereader parses only the
	// records that changed, so a wave of creates among hundreds of envs
	// costs the server a few records per reload, not all of them.
	rr := store.Rereader()
	load := func() error {
		st, err := rr.Read(ctx)
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
		// A broken state record must not take names of working envs down
		// with the daemon: serve what we have and wait for the next write.
		s.logf("dns: read state: %v (serving no envs until it changes)", err)
	}
	stamp := fileStamp(store.EnvsDir())
	loaded := time.Now()
	for {
		changed, err := w.Wait(s.rescan)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("watch state directory: %w", err)
		}
		if !changed {
			changed = fileStamp(store.EnvsDir()) != stamp
		}
		if !changed {
			continue
		}
		if wait := s.settle - time.Since(loaded); wait > 0 {
			// Writes landing meanwhile are covered by the reload
			// below; their queued events cost at most one more.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		stamp = fileStamp(store.EnvsDir())
		loaded = time.Now()
		if err := load(); err != nil {
			s.logf("dns: reload state: %v (keeping the previous zone)", err)
		}
	}
}
