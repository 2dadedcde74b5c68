package overlayfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Limits of thin layers: past them a new state gets a whole new snapshot,
// which also keeps the overlay's layer stack (and its mount options) short.
const (
	maxLayers    = 16
	maxThinPaths = 4096
)

// baseMeta is what root/b/<id>/meta.json holds.
type baseMeta struct {
	ID       string      `json:"id"`
	State    sourceState `json:"state"`
	Excludes []string    `json:"excludes,omitempty"`
	Class    string      `json:"class"`
	Parent   string      `json:"parent,omitempty"`
	Layers   []string    `json:"layers"` // base ids, top first, this one included
	Reflink  bool        `json:"reflink"`
	Files    int         `json:"files"`
	Bytes    int64       `json:"bytes"`
	Created  time.Time   `json:"created"`
}

// Base classes: overlay bases may be thin layers, copy bases never are
// (a copy is taken from one whole tree).
const (
	classOverlay = "overlay"
	classCopy    = "copy"
)

func (m *Manager) mode() Mode {
	if m.opts.force != "" {
		return m.opts.force
	}
	m.probeOnce.Do(func() {
		err := probeOverlay(filepath.Join(m.root, dirTmp))
		m.overlayOK = err == nil
		if err != nil {
			m.logf("overlay unavailable (%v): workspaces will be copies", err)
		}
	})
	if m.overlayOK {
		return ModeOverlay
	}
	return ModeReflink
}

func (m *Manager) lock() (func(), error) { return flock(filepath.Join(m.root, "lock"), false) }

// Create makes workspace id from source. It fails if id exists. On any
// error nothing of the workspace is left behind, and a base made only for it
// is removed too. The source is only read.
func (m *Manager) Create(ctx context.Context, id, source string, o CreateOptions) (ws *Workspace, err error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	ex, err := newExcluder(o.Exclude)
	if err != nil {
		return nil, err
	}
	src, err := filepath.Abs(source)
	if err == nil {
		src, err = filepath.EvalSymlinks(src)
	}
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", source, err)
	}
	if fi, err := os.Stat(src); err != nil {
		return nil, fmt.Errorf("source %s: %w", src, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("source %s: not a directory", src)
	}
	mode := m.mode()
	class := classCopy
	if mode == ModeOverlay {
		class = classOverlay
	}

	dir := m.wsDir(id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("workspace %q: %w", id, ErrExists)
		}
		return nil, fmt.Errorf("create workspace %q: %w", id, err)
	}
	defer func() {
		if err != nil {
			m.abort(context.WithoutCancel(ctx), id)
		}
	}()

	t0 := time.Now()
	st, err := fingerprint(ctx, src, ex, o.Exclude, class)
	if err != nil {
		return nil, fmt.Errorf("read source state of %s: %w", src, err)
	}
	t1 := time.Now()
	meta := &wsMeta{
		Workspace: Workspace{ID: id, Source: src, Mode: mode},
		Created:   time.Now().UTC(),
	}
	if mode == ModeOverlay {
		meta.Path = filepath.Join(dir, "m")
		meta.Upper = filepath.Join(dir, "upper")
		meta.Work = filepath.Join(dir, "work")
	} else {
		meta.Path = filepath.Join(dir, "tree")
	}
	base, err := m.ensureBase(ctx, st, ex, o.Exclude, class, func(b *baseMeta) error {
		meta.Base = b.ID
		if mode == ModeOverlay {
			meta.Layers = nil
			for _, l := range b.Layers {
				meta.Layers = append(meta.Layers, m.layerDir(l))
			}
		}
		return m.writeWS(meta)
	})
	if err != nil {
		return nil, err
	}
	t2 := time.Now()
	link, err := readGitLink(src)
	if err != nil {
		return nil, err
	}
	if mode == ModeOverlay {
		err = m.prepareOverlay(meta, base, link)
	} else {
		err = m.prepareCopy(ctx, meta, base, link)
	}
	if err != nil {
		return nil, err
	}
	unlock, err := m.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := m.writeWS(meta); err != nil {
		return nil, err
	}
	if mode == ModeOverlay {
		if err := mountOverlay(meta.Layers, meta.Upper, meta.Work, meta.Path); err != nil {
			return nil, err
		}
	}
	m.logf("workspace %s: %s over base %s (%d layers): state %s, base %s, setup %s", id, meta.Mode, base.ID,
		len(base.Layers), t1.Sub(t0).Round(time.Microsecond), t2.Sub(t1).Round(time.Microsecond),
		time.Since(t2).Round(time.Microsecond))
	out := meta.Workspace
	return &out, nil
}

// prepareOverlay makes the upper, work and mount directories. The upper
// directory's owner and mode become those of the workspace's root, so they
// must be the source's.
func (m *Manager) prepareOverlay(w *wsMeta, b *baseMeta, link *gitLink) error {
	for _, d := range []string{w.Upper, w.Work, w.Path} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(m.layerDir(b.Layers[len(b.Layers)-1]), &st); err != nil {
		return fmt.Errorf("stat base: %w", err)
	}
	if err := setMeta(w.Upper, &st, false, os.Geteuid() == 0); err != nil {
		return err
	}
	if link != nil {
		return m.privateGit(w, link, w.Upper)
	}
	return nil
}

// prepareCopy clones the base into the workspace: by reflink where the
// filesystem can (ModeReflink), else by copy (ModeCopy).
func (m *Manager) prepareCopy(ctx context.Context, w *wsMeta, b *baseMeta, link *gitLink) error {
	tryReflink := m.opts.force != ModeCopy
	_, reflinked, err := snapshotTree(ctx, m.layerDir(b.ID), w.Path, nil, tryReflink, m.opts.progress, m.logf)
	if err != nil {
		return fmt.Errorf("copy base into workspace %q: %w", w.ID, err)
	}
	w.Mode = ModeCopy
	if reflinked {
		w.Mode = ModeReflink
	}
	if link != nil {
		if err := os.Remove(w.Path + "/.git"); err != nil {
			return fmt.Errorf("replace .git link: %w", err)
		}
		return m.privateGit(w, link, w.Path)
	}
	return nil
}

// privateGit gives the workspace its own git directory (see
// makePrivateGitDir) and points the workspace's .git file at it.
func (m *Manager) privateGit(w *wsMeta, link *gitLink, top string) error {
	w.GitDir = filepath.Join(m.wsDir(w.ID), "git")
	own, err := ownerOf(w.Source)
	if err != nil {
		return err
	}
	if err := makePrivateGitDir(link, w.GitDir, own); err != nil {
		return fmt.Errorf("workspace %q git directory: %w", w.ID, err)
	}
	f := top + "/.git"
	if err := os.WriteFile(f, []byte("gitdir: "+w.GitDir+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", f, err)
	}
	if os.Geteuid() == 0 {
		return os.Lchown(f, int(own.uid), int(own.gid))
	}
	return nil
}

// abort undoes a failed Create: the workspace directory goes, and so does
// any base nothing else uses.
func (m *Manager) abort(ctx context.Context, id string) {
	unlock, err := m.lock()
	if err != nil {
		m.logf("clean up workspace %q: %v", id, err)
		return
	}
	defer unlock()
	dir := m.wsDir(id)
	if err := unmount(filepath.Join(dir, "m"), true); err != nil {
		m.logf("clean up workspace %q: %v", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		m.logf("clean up workspace %q: %v", id, err)
	}
	if err := m.gc(); err != nil {
		m.logf("clean up after workspace %q: %v", id, err)
	}
}

// ensureBase finds or builds the base for st and calls register with it
// while holding the root lock, so that no concurrent Remove can collect the
// base between its choice and its first use.
func (m *Manager) ensureBase(ctx context.Context, st *sourceState, ex *excluder, excludes []string, class string, register func(*baseMeta) error) (*baseMeta, error) {
	id := st.Key[:20]
	if b, ok, err := m.registerExisting(id, register); ok || err != nil {
		return b, err
	}
	// One builder per base: the others wait here and then find it.
	kunlock, err := flock(filepath.Join(m.root, dirLocks, id+".lock"), false)
	if err != nil {
		return nil, err
	}
	defer kunlock()
	if b, ok, err := m.registerExisting(id, register); ok || err != nil {
		return b, err
	}
	allowThin := class == classOverlay
	for {
		b, err := m.buildBase(ctx, id, st, ex, excludes, class, allowThin)
		if err != nil {
			return nil, err
		}
		ok, err := m.install(b, register)
		if err != nil || ok {
			return b, err
		}
		// The parent layers went away while we built on them.
		allowThin = false
	}
}

func (m *Manager) registerExisting(id string, register func(*baseMeta) error) (*baseMeta, bool, error) {
	unlock, err := m.lock()
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	b, err := m.readBase(id)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return b, true, register(b)
}

func (m *Manager) readBase(id string) (*baseMeta, error) {
	var b baseMeta
	if err := readJSON(filepath.Join(m.baseDir(id), "meta.json"), &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// install moves a built base into place and registers it. It reports false
// (and discards the build) when a parent layer was collected meanwhile.
func (m *Manager) install(b *baseMeta, register func(*baseMeta) error) (bool, error) {
	unlock, err := m.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	tmp := filepath.Join(m.root, dirTmp, b.ID)
	for _, l := range b.Layers[1:] {
		if _, err := os.Stat(m.layerDir(l)); err != nil {
			os.RemoveAll(tmp)
			return false, nil
		}
	}
	if err := os.Rename(tmp, m.baseDir(b.ID)); err != nil {
		os.RemoveAll(tmp)
		return false, fmt.Errorf("install base %s: %w", b.ID, err)
	}
	return true, register(b)
}

// buildBase builds base id in root/tmp: a thin layer over the newest base of
// the same source when that is cheaper, a whole snapshot otherwise.
func (m *Manager) buildBase(ctx context.Context, id string, st *sourceState, ex *excluder, excludes []string, class string, allowThin bool) (*baseMeta, error) {
	tmp := filepath.Join(m.root, dirTmp, id)
	if err := os.RemoveAll(tmp); err != nil { // left by a crashed builder
		return nil, fmt.Errorf("clean %s: %w", tmp, err)
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", tmp, err)
	}
	b := &baseMeta{ID: id, State: *st, Excludes: excludes, Class: class, Created: time.Now().UTC()}
	ok, err := m.buildThin(ctx, b, st, ex, tmp, allowThin)
	if err == nil && !ok {
		err = m.buildFull(ctx, b, st, ex, tmp)
	}
	if err == nil {
		err = writeJSON(filepath.Join(tmp, "meta.json"), b)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return b, nil
}

func (m *Manager) buildFull(ctx context.Context, b *baseMeta, st *sourceState, ex *excluder, tmp string) error {
	start := time.Now()
	w, reflinked, err := snapshotTree(ctx, st.Source, filepath.Join(tmp, "t"), ex, true, m.opts.progress, m.logf)
	if err != nil {
		return err
	}
	b.Layers = []string{b.ID}
	b.Reflink = reflinked
	b.Files, b.Bytes = w.files, w.bytes
	prefix := ""
	if st.Kind == kindGit {
		prefix = ".git"
	}
	if err := writeJSON(filepath.Join(tmp, "manifest.json"), manifestFromWalk(w, prefix)); err != nil {
		return err
	}
	how := "copied"
	if reflinked {
		how = "reflinked"
	}
	m.logf("base %s: %s %d files (%d MB) from %s in %s", b.ID, how, w.files, w.bytes>>20, st.Source,
		time.Since(start).Round(time.Millisecond))
	return nil
}

// newestBase returns the most recent installed base of the same source,
// exclude list and class.
func (m *Manager) newestBase(st *sourceState, excludes []string, class string) *baseMeta {
	ents, err := os.ReadDir(filepath.Join(m.root, dirBases))
	if err != nil {
		return nil
	}
	var best *baseMeta
	for _, e := range ents {
		b, err := m.readBase(e.Name())
		if err != nil || b.Class != class || b.State.Source != st.Source || b.State.Kind != st.Kind ||
			fmt.Sprint(b.Excludes) != fmt.Sprint(excludes) {
			continue
		}
		if best == nil || b.Created.After(best.Created) {
			best = b
		}
	}
	return best
}

// buildThin builds a layer holding only what changed since the newest base
// of the same source. It reports false when a whole snapshot is due instead.
func (m *Manager) buildThin(ctx context.Context, b *baseMeta, st *sourceState, ex *excluder, tmp string, allowThin bool) (bool, error) {
	if !allowThin {
		return false, nil
	}
	unlock, err := m.lock()
	if err != nil {
		return false, err
	}
	parent := m.newestBase(st, b.Excludes, b.Class)
	unlock()
	if parent == nil || len(parent.Layers) >= maxLayers {
		return false, nil
	}
	var old manifest
	if err := readJSON(filepath.Join(m.baseDir(parent.ID), "manifest.json"), &old); err != nil {
		return false, nil // collected meanwhile
	}
	start := time.Now()
	var (
		paths []string
		cur   manifest
	)
	switch st.Kind {
	case kindTree:
		cur = st.manifest
		paths = changedPaths(old, cur)
	case kindGit:
		if parent.State.Head != st.Head {
			out, err := runGit(ctx, st.Source, "diff", "--name-only", "-z", "--no-renames", parent.State.Head, st.Head, "--")
			if err != nil {
				m.logf("base %s: %v: taking a whole snapshot", b.ID, err)
				return false, nil
			}
			for _, p := range strings.Split(string(out), "\x00") {
				if p != "" {
					paths = append(paths, p)
				}
			}
		}
		for p := range parent.State.Dirty {
			paths = append(paths, p)
		}
		for p := range st.Dirty {
			paths = append(paths, p)
		}
		if cur, err = walkManifest(ctx, st.Source, ".git", nil); err != nil {
			return false, err
		}
		paths = append(paths, changedPaths(old, cur)...)
	}
	paths = uniq(paths)
	if len(paths) > maxThinPaths {
		return false, nil
	}
	layer := filepath.Join(tmp, "t")
	n, err := buildLayer(ctx, st.Source, layer, paths, ex, m.logf)
	if err != nil {
		return false, fmt.Errorf("thin layer for %s: %w", st.Source, err)
	}
	if err := writeJSON(filepath.Join(tmp, "manifest.json"), cur); err != nil {
		return false, err
	}
	b.Parent = parent.ID
	b.Layers = append([]string{b.ID}, parent.Layers...)
	b.Files = n
	m.logf("base %s: thin layer of %d paths over %s in %s", b.ID, len(paths), parent.ID,
		time.Since(start).Round(time.Millisecond))
	return true, nil
}

func uniq(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// Ensure mounts workspace id again if it is not mounted (after a reboot)
// and returns it. It costs one statfs when the mount is in place.
func (m *Manager) Ensure(ctx context.Context, id string) (*Workspace, error) {
	w, err := m.readWS(id)
	if err != nil {
		return nil, err
	}
	if w.Mode != ModeOverlay || isOverlayMounted(w.Path) {
		ws := w.Workspace
		return &ws, nil
	}
	unlock, err := m.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if w, err = m.readWS(id); err != nil {
		return nil, err
	}
	if !isOverlayMounted(w.Path) {
		for _, l := range w.Layers {
			if _, err := os.Stat(l); err != nil {
				return nil, fmt.Errorf("workspace %q: base layer: %w", id, err)
			}
		}
		if err := mountOverlay(w.Layers, w.Upper, w.Work, w.Path); err != nil {
			return nil, fmt.Errorf("workspace %q: %w", id, err)
		}
	}
	ws := w.Workspace
	return &ws, nil
}

// Unmount unmounts workspace id, keeping its changes; Ensure mounts it
// again. It fails while processes still use the workspace.
func (m *Manager) Unmount(ctx context.Context, id string) error {
	w, err := m.readWS(id)
	if err != nil {
		return err
	}
	if w.Mode != ModeOverlay {
		return nil
	}
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return unmount(w.Path, false)
}

// Remove unmounts and deletes workspace id, then deletes every base no
// workspace uses any more. Removing a workspace that does not exist is not
// an error.
func (m *Manager) Remove(ctx context.Context, id string) error {
	if err := validID(id); err != nil {
		return err
	}
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	dir := m.wsDir(id)
	if w, err := m.readWS(id); err == nil && w.Mode == ModeOverlay {
		if err := unmount(w.Path, true); err != nil {
			return fmt.Errorf("remove workspace %q: %w", id, err)
		}
	}
	// The metadata goes first: a crash later leaves garbage gc can see,
	// never a workspace pointing at half a tree.
	if err := os.Remove(filepath.Join(dir, "meta.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove workspace %q: %w", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove workspace %q: %w", id, err)
	}
	return m.gc()
}

// gc deletes bases no workspace uses, and builds left by crashed processes.
// The caller holds the root lock.
func (m *Manager) gc() error {
	used := map[string]bool{}
	ents, err := os.ReadDir(filepath.Join(m.root, dirWS))
	if err != nil {
		return fmt.Errorf("list workspaces: %w", err)
	}
	for _, e := range ents {
		w, err := m.readWS(e.Name())
		if err != nil {
			continue
		}
		used[w.Base] = true
		if b, err := m.readBase(w.Base); err == nil {
			for _, l := range b.Layers {
				used[l] = true
			}
		}
	}
	bases, err := os.ReadDir(filepath.Join(m.root, dirBases))
	if err != nil {
		return fmt.Errorf("list bases: %w", err)
	}
	var errs []error
	for _, e := range bases {
		if used[e.Name()] {
			continue
		}
		// Rename first so a half-deleted base is never mistaken for one.
		trash := filepath.Join(m.root, dirTmp, "gc-"+e.Name()+"-"+randHex())
		if err := os.Rename(m.baseDir(e.Name()), trash); err != nil {
			errs = append(errs, fmt.Errorf("remove base %s: %w", e.Name(), err))
			continue
		}
		if err := os.RemoveAll(trash); err != nil {
			errs = append(errs, fmt.Errorf("remove base %s: %w", e.Name(), err))
		}
	}
	tmps, _ := os.ReadDir(filepath.Join(m.root, dirTmp))
	for _, e := range tmps {
		name := e.Name()
		if strings.HasPrefix(name, "gc-") {
			os.RemoveAll(filepath.Join(m.root, dirTmp, name))
			continue
		}
		if strings.HasPrefix(name, "probe-") {
			continue
		}
		kunlock, err := flock(filepath.Join(m.root, dirLocks, name+".lock"), true)
		if err != nil {
			continue // being built
		}
		// The lock file stays: a waiter may hold it open.
		os.RemoveAll(filepath.Join(m.root, dirTmp, name))
		kunlock()
	}
	return errors.Join(errs...)
}

func randHex() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}
