package overlayfs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// readHow says how Create learned a source's state.
type readHow int

const (
	readWatched readHow = iota + 1 // the watcher vouched for a base: nothing read
	readPatched                    // only the paths the watcher saw change were read
	readChecked                    // every path of the newest base stat'ed: unchanged
	readWalked                     // the whole source walked
)

// errNeedWalk is returned by ensureBase when a whole snapshot is due but
// the state came from a watcher's changed paths, without a walk to copy.
var errNeedWalk = errors.New("a whole snapshot needs a walk of the source")

// sourceExcluder compiles the exclude globs of src. A root inside the
// source would snapshot itself, so it is left out too.
func sourceExcluder(src, root string, globs []string) (*excluder, error) {
	ex, err := newExcluder(globs)
	if err != nil {
		return nil, err
	}
	if rel, err := filepath.Rel(src, root); err == nil && rel != "." && !strings.HasPrefix(rel, "..") {
		ex.pats = append(ex.pats, pattern{anchored: true, segs: strings.Split(filepath.ToSlash(rel), "/")})
	}
	return ex, nil
}

// sourceBase finds or builds the base showing src as it is now, and
// registers the workspace on it through register (see ensureBase).
//
// With a watcher that has watched src since a base was known to show it,
// that base is the answer when nothing changed since, and the changed
// paths patch its manifest otherwise. Without one, the state is read
// (readSource), and the first Create of a source to find no watcher
// starts one, watching every directory before reading it so the watcher
// vouches for the state read.
//
// handed says the base's flush (see syncLater) was handed to the watcher
// this Create started.
func (m *Manager) sourceBase(ctx context.Context, src string, ex *excluder, excludes []string, class string, register func(*baseMeta) error) (b *baseMeta, how readHow, handed bool, err error) {
	if m.opts.watcher == nil {
		b, how, err = m.readSource(ctx, src, ex, excludes, class, nil, register)
		return b, how, false, err
	}
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return nil, 0, false, fmt.Errorf("source %s: %w", src, err)
	}
	key := watchKey(src, excludes)
	rep, lock := m.findWatcher(ctx, key, class)
	if rep != nil && (rep.Dev != uint64(st.Dev) || rep.Ino != st.Ino) {
		// It watches a directory that is no longer at this path: replace it.
		m.stopWatcher(ctx, key)
		if rep, lock = m.findWatcher(ctx, key, class); rep != nil {
			rep = nil // another Create was quicker; this one reads the source
		}
	}
	switch {
	case rep != nil:
		b, how, err := m.fromWatcher(ctx, key, rep, src, ex, excludes, class, register)
		if b != nil || err != nil {
			return b, how, false, err
		}
		// Everything read from here on comes after change rep.Seq.
		b, how, err = m.readSource(ctx, src, ex, excludes, class, nil, register)
		if err == nil {
			m.markWatcher(ctx, key, class, b.ID, rep.Seq)
		}
		return b, how, false, err
	case lock != nil:
		ws, err := newWatchSet()
		if err != nil {
			lock.Close()
			m.logf("not watching %s: %v", src, err)
			b, how, err := m.readSource(ctx, src, ex, excludes, class, nil, register)
			return b, how, false, err
		}
		b, how, err := m.readSource(ctx, src, ex, excludes, class, ws, register)
		if err == nil && ws.err == nil {
			h := watchHandoff{Root: m.root, Key: key, Source: src, Dev: uint64(st.Dev), Ino: st.Ino,
				Excludes: excludes, Class: class, Base: b.ID}
			if b.PendingBoot != "" {
				h.Sync = []string{b.ID}
			}
			if err := m.startWatcher(ws, lock, h); err != nil {
				m.logf("not watching %s: %v", src, err)
				return b, how, false, nil
			}
			return b, how, h.Sync != nil, nil
		}
		if ws.err != nil {
			m.logf("not watching %s: %v; each env of it checks every file", src, ws.err)
		}
		ws.close()
		lock.Close()
		return b, how, false, err
	}
	b, how, err = m.readSource(ctx, src, ex, excludes, class, nil, register)
	return b, how, false, err
}

// fromWatcher answers from a watcher's reply: its mark when nothing
// changed, else the mark's manifest patched with the changed paths. It
// returns no base (and no error) when the reply cannot answer: no mark,
// changes not itemized, the mark's base gone, or a whole snapshot due.
func (m *Manager) fromWatcher(ctx context.Context, key string, rep *watchReply, src string, ex *excluder, excludes []string, class string, register func(*baseMeta) error) (*baseMeta, readHow, error) {
	if rep.Base == "" || !rep.Known {
		return nil, 0, nil
	}
	if len(rep.Changed) == 0 {
		b, ok, err := m.registerExisting(rep.Base, register)
		if err != nil || ok {
			return b, readWatched, err
		}
		return nil, 0, nil // collected meanwhile
	}
	old, err := readManifest(filepath.Join(m.baseDir(rep.Base), "manifest"))
	if err != nil {
		return nil, 0, nil
	}
	man, err := patchManifest(ctx, src, old, rep.Changed, ex)
	if err != nil {
		return nil, 0, ctx.Err() // the source changed under the patch: read it whole
	}
	b, err := m.ensureBase(ctx, man.key(class, src, excludes), src, nil, man, ex, excludes, class, register)
	if errors.Is(err, errNeedWalk) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	m.markWatcher(ctx, key, class, b.ID, rep.Seq)
	return b, readPatched, nil
}

// readSource reads src's state itself: the newest base's manifest checked
// path by path, else a walk. With a watch set, every directory is watched
// before it is read.
func (m *Manager) readSource(ctx context.Context, src string, ex *excluder, excludes []string, class string, ws *watchSet, register func(*baseMeta) error) (*baseMeta, readHow, error) {
	if prev := m.newestBase(src, excludes, class, true); prev != nil {
		if man, err := readManifest(filepath.Join(m.baseDir(prev.ID), "manifest")); err == nil {
			ws.addManifest(src, man)
			if unchanged(ctx, src, man) {
				b, ok, err := m.registerExisting(prev.ID, register)
				if err != nil || ok {
					return b, readChecked, err
				}
			}
			// Directories may have moved since: the walk watches afresh.
			ws.reset()
		}
	}
	w, err := walkTree(ctx, src, ex, ws)
	if err != nil {
		return nil, 0, fmt.Errorf("read source state of %s: %w", src, err)
	}
	man := manifestFromWalk(w)
	b, err := m.ensureBase(ctx, man.key(class, src, excludes), src, w, man, ex, excludes, class, register)
	return b, readWalked, err
}
