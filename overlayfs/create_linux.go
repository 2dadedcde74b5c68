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
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/overlayfs/mounted"
)

// Limits of thin layers: past them a new state gets a whole new snapshot,
// which also keeps the overlay's layer stack (and its mount options) short.
const (
	maxLayers    = 16
	maxThinPaths = 4096
)

// baseMeta is what root/b/<id>/meta.json holds.
type baseMeta struct {
	ID       string    `json:"id"`
	Key      string    `json:"key"`
	Source   string    `json:"source"`
	Excludes []string  `json:"excludes,omitempty"`
	Class    string    `json:"class"`
	Parent   string    `json:"parent,omitempty"`
	Layers   []string  `json:"layers"` // base ids, top first, this one included
	Reflink  bool      `json:"reflink"`
	Files    int       `json:"files"`
	Bytes    int64     `json:"bytes"`
	Created  time.Time `json:"created"`
	// Image names the EROFS image (in the base's directory) holding a full
	// snapshot, mounted at t/; without it t/ is a plain directory (thin
	// layers, copy bases, bases made before images existed).
	Image string `json:"image,omitempty"`
	// NoImage says why a full overlay snapshot is a directory: its image
	// could not be mounted.
	NoImage string `json:"noImage,omitempty"`
	// PendingBoot is the boot id of the boot that wrote the base while it
	// is not yet known to be on disk; empty once it is (see markDurable).
	PendingBoot string `json:"pendingBoot,omitempty"`
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
		err := m.probe()
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

// probe learns whether overlays can be mounted here. Success is kept in
// root/probe with the boot id, so a CLI that makes one Manager per command
// does not mount a throwaway overlay every time; a failure is probed again
// next time, in case it was passing.
func (m *Manager) probe() error {
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	cache := filepath.Join(m.root, "probe")
	if b, err := os.ReadFile(cache); err == nil && len(bootID) > 0 && string(b) == string(bootID) {
		return nil
	}
	if err := probeOverlay(filepath.Join(m.root, dirTmp)); err != nil {
		return err
	}
	if len(bootID) > 0 {
		tmp := cache + ".tmp"
		if os.WriteFile(tmp, bootID, 0o644) == nil {
			os.Rename(tmp, cache)
		}
	}
	return nil
}

func (m *Manager) lock() (func(), error) { return flock(filepath.Join(m.root, "lock"), false) }

// Create makes workspace id from source. It fails if id exists. On any
// error nothing of the workspace is left behind, and a base made only for it
// is removed too. The source is only read.
func (m *Manager) Create(ctx context.Context, id, source string, o CreateOptions) (*Workspace, error) {
	ws, _, err := m.create(ctx, id, source, o)
	return ws, err
}

// create is Create, also saying how the source's state was learned.
func (m *Manager) create(ctx context.Context, id, source string, o CreateOptions) (ws *Workspace, how readHow, err error) {
	if err := validID(id); err != nil {
		return nil, 0, err
	}
	src, err := filepath.Abs(source)
	if err == nil {
		src, err = filepath.EvalSymlinks(src)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("source %s: %w", source, err)
	}
	if !utf8.ValidString(src) {
		return nil, 0, fmt.Errorf("source %q: %w", src, ErrSourcePath)
	}
	if fi, err := os.Stat(src); err != nil {
		return nil, 0, fmt.Errorf("source %s: %w", src, err)
	} else if !fi.IsDir() {
		return nil, 0, fmt.Errorf("source %s: not a directory", src)
	}
	ex, err := sourceExcluder(src, m.root, o.Exclude)
	if err != nil {
		return nil, 0, err
	}
	mode := m.mode()
	class := classCopy
	if mode == ModeOverlay {
		class = classOverlay
	}

	dir := m.wsDir(id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, 0, fmt.Errorf("workspace %q: %w", id, ErrExists)
		}
		return nil, 0, fmt.Errorf("create workspace %q: %w", id, err)
	}
	defer func() {
		if err != nil {
			m.abort(context.WithoutCancel(ctx), id)
		}
	}()

	meta := &wsMeta{
		Workspace: Workspace{ID: id, Source: src, Mode: mode},
		Created:   time.Now().UTC(),
	}
	if mode == ModeOverlay {
		meta.Path = filepath.Join(dir, "m")
		meta.Upper = filepath.Join(dir, "o", "upper")
		meta.Work = filepath.Join(dir, "o", "work")
	} else {
		meta.Path = filepath.Join(dir, "tree")
	}
	register := func(b *baseMeta) error {
		meta.Base = b.ID
		if mode == ModeOverlay {
			meta.Layers = nil
			for _, l := range b.Layers {
				meta.Layers = append(meta.Layers, m.layerDir(l))
			}
		}
		return m.writeWS(meta, false)
	}
	base, how, handed, err := m.sourceBase(ctx, src, ex, o.Exclude, class, register)
	if err != nil {
		return nil, 0, err
	}
	if err := m.mountBase(base, false); err != nil {
		return nil, 0, err
	}
	link, err := readGitLink(src)
	if err != nil {
		return nil, 0, err
	}
	if mode == ModeOverlay {
		err = m.prepareOverlay(meta, base, link)
	} else {
		err = m.prepareCopy(ctx, meta, base, link)
	}
	if err != nil {
		return nil, 0, err
	}
	// No root lock from here: the base is registered (gc sees this
	// workspace's metadata naming it), and the rest is this workspace's
	// own. Parallel creates would otherwise queue behind each other's
	// fsync and mount.
	if err := m.writeWS(meta, true); err != nil {
		return nil, 0, err
	}
	if mode == ModeOverlay {
		if err := mountOverlay(meta.Layers, meta.Upper, meta.Work, meta.Path); err != nil {
			return nil, 0, err
		}
	}
	// The workspace is made: now its base may go to disk. Asked of this
	// source's watcher when one runs, so this Create does not wait for it;
	// inline without watchers. Either way a failure leaves the base
	// marked, usable until the next boot, never after: no error here.
	if base.PendingBoot != "" && !handed {
		key := ""
		if m.opts.watcher != nil {
			key = watchKey(src, o.Exclude)
		}
		if err := m.syncLater(ctx, key, base); err != nil {
			m.logf("base %s: %v", base.ID, err)
		}
	}
	out := meta.Workspace
	return &out, how, nil
}

// prepareOverlay makes the upper, work and mount directories. The upper
// directory's owner and mode become those of the workspace's root, so they
// must be the source's.
func (m *Manager) prepareOverlay(w *wsMeta, b *baseMeta, link *gitLink) error {
	if err := os.Mkdir(filepath.Dir(w.Upper), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(w.Upper), err)
	}
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
	reflinked, err := snapshotTree(ctx, m.layerDir(b.ID), w.Path, nil, tryReflink, m.opts.progress, m.logf)
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
	if err := m.gc(ctx); err != nil {
		m.logf("clean up after workspace %q: %v", id, err)
	}
}

// ensureBase finds or builds the base of state key and calls register with
// it while holding the root lock, so that no concurrent Remove can collect
// the base between its choice and its first use. Without a walk w (a state
// from a watcher's changed paths) only a thin layer can be built; when a
// whole snapshot is due it returns errNeedWalk.
func (m *Manager) ensureBase(ctx context.Context, key, src string, w *walkResult, man manifest, ex *excluder, excludes []string, class string, register func(*baseMeta) error) (*baseMeta, error) {
	id, err := m.baseID(key)
	if err != nil {
		return nil, err
	}
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
	b := &baseMeta{ID: id, Key: key, Source: src, Excludes: excludes, Class: class}
	allowThin := class == classOverlay
	for {
		b.Created = time.Now().UTC()
		if err := m.buildBase(ctx, b, w, man, ex, allowThin); err != nil {
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

// baseID names the base of state key: the key's first 20 digits, unless a
// torn base (see torn) or one a crash left without readable metadata holds
// that name; then a base of this boot beside it. The torn one stays for the envs on it, which cannot be mounted
// again, until they are removed.
func (m *Manager) baseID(key string) (string, error) {
	id := key[:20]
	b, err := m.readBase(id)
	if err == nil && !m.torn(b) {
		return id, nil
	}
	if _, serr := os.Stat(m.baseDir(id)); errors.Is(err, os.ErrNotExist) && errors.Is(serr, os.ErrNotExist) {
		return id, nil
	}
	boot, err := m.bootID()
	if err != nil {
		return "", fmt.Errorf("base %s: %w", id, err)
	}
	return id + "-" + strings.ReplaceAll(boot, "-", "")[:12], nil
}

// registerExisting registers the installed base id, unless it is torn
// (written before a reboot and not known to be on disk): that one is
// never used again, and reported as missing.
func (m *Manager) registerExisting(id string, register func(*baseMeta) error) (*baseMeta, bool, error) {
	unlock, err := m.lock()
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	b, err := m.readBase(id)
	if err != nil || m.torn(b) {
		// Missing, or left unreadable or unflushed by a crash.
		return nil, false, nil
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
			removeLayerDir(tmp)
			return false, nil
		}
	}
	// An image mounted at tmp/t moves with its directory.
	if err := os.Rename(tmp, m.baseDir(b.ID)); err != nil {
		removeLayerDir(tmp)
		return false, fmt.Errorf("install base %s: %w", b.ID, err)
	}
	return true, register(b)
}

// buildBase builds base b in root/tmp: a thin layer over the newest base
// of the same source when that is cheaper, a whole snapshot otherwise.
func (m *Manager) buildBase(ctx context.Context, b *baseMeta, w *walkResult, man manifest, ex *excluder, allowThin bool) error {
	tmp := filepath.Join(m.root, dirTmp, b.ID)
	if err := removeLayerDir(tmp); err != nil { // left by a crashed builder
		return fmt.Errorf("clean %s: %w", tmp, err)
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	ok, err := m.buildThin(ctx, b, man, ex, tmp, allowThin)
	if err == nil && !ok {
		if w == nil {
			err = errNeedWalk
		} else {
			err = m.buildFull(ctx, b, w, tmp)
		}
	}
	if err == nil {
		err = writeManifest(filepath.Join(tmp, "manifest"), man)
	}
	// A base outlives reboots: its files must be on disk before an env
	// relies on it after a crash (ext4 would otherwise leave empty files).
	// That flush is left to after the Create (syncLater); until then the
	// metadata names this boot. Nothing is flushed now, not even that
	// mark (its fsync would force out the log of every clone on the
	// Create's path, for nothing): a crash can only leave it as written,
	// empty or missing, and all three say the base may be torn (stackOf,
	// registerExisting, baseID). Without a boot id to name, the base is
	// flushed here, as a whole.
	boot, berr := m.bootID()
	if err == nil && berr == nil {
		b.PendingBoot = boot
		err = writeJSON(filepath.Join(tmp, "meta.json"), b, false)
	} else if err == nil {
		b.PendingBoot = ""
		err = writeJSON(filepath.Join(tmp, "meta.json"), b, false)
		if err == nil {
			err = syncFS(tmp)
		}
	}
	if err != nil {
		removeLayerDir(tmp)
		return err
	}
	return nil
}

// buildFull takes a whole snapshot: for overlay bases an EROFS image, which
// creates one file instead of one per source path, unless images cannot
// be mounted here; a directory tree otherwise.
func (m *Manager) buildFull(ctx context.Context, b *baseMeta, w *walkResult, tmp string) error {
	start := time.Now()
	b.Parent = ""
	b.Layers = []string{b.ID}
	b.Files, b.Bytes = w.files, w.bytes
	if b.Class == classOverlay && !m.noImage.Load() {
		ok, err := m.buildImage(ctx, b, w, tmp)
		if err != nil {
			return err
		}
		if ok {
			how := "copied"
			if b.Reflink {
				how = "reflinked"
			}
			m.logf("base %s: image of %d files (%d MB, %s) from %s in %s", b.ID, w.files, w.bytes>>20, how,
				b.Source, time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
	reflinked, err := copyWalked(ctx, b.Source, filepath.Join(tmp, "t"), w, true, m.opts.progress, m.logf)
	if err != nil {
		return err
	}
	b.Reflink = reflinked
	how := "copied"
	if reflinked {
		how = "reflinked"
	}
	m.logf("base %s: %s %d files (%d MB) from %s in %s", b.ID, how, w.files, w.bytes>>20, b.Source,
		time.Since(start).Round(time.Millisecond))
	return nil
}

// newestBase returns the most recent installed base of the same source,
// exclude list and class; with usable, torn bases (see torn) are left out.
func (m *Manager) newestBase(src string, excludes []string, class string, usable bool) *baseMeta {
	ents, err := os.ReadDir(filepath.Join(m.root, dirBases))
	if err != nil {
		return nil
	}
	var best *baseMeta
	for _, e := range ents {
		b, err := m.readBase(e.Name())
		if err != nil || b.Class != class || b.Source != src || fmt.Sprint(b.Excludes) != fmt.Sprint(excludes) {
			continue
		}
		if usable && m.torn(b) {
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
func (m *Manager) buildThin(ctx context.Context, b *baseMeta, man manifest, ex *excluder, tmp string, allowThin bool) (bool, error) {
	if !allowThin {
		return false, nil
	}
	parent := m.newestBase(b.Source, b.Excludes, b.Class, true)
	if parent == nil || len(parent.Layers) >= maxLayers {
		return false, nil
	}
	old, err := readManifest(filepath.Join(m.baseDir(parent.ID), "manifest"))
	if err != nil {
		return false, nil // collected meanwhile
	}
	start := time.Now()
	paths := changedPaths(old, man)
	if len(paths) > maxThinPaths {
		return false, nil
	}
	n, err := buildLayer(ctx, b.Source, filepath.Join(tmp, "t"), paths, ex, m.logf)
	if err != nil {
		return false, fmt.Errorf("thin layer for %s: %w", b.Source, err)
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
	if mounted.InPlace(w.Path, string(w.Mode)) {
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
	if !mounted.Overlay(w.Path) {
		b, err := m.stackOf(w)
		if err != nil {
			return nil, err
		}
		if err := m.mountBase(b, true); err != nil {
			return nil, fmt.Errorf("workspace %q: %w", id, err)
		}
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
	return m.gc(ctx)
}

// gc deletes bases no workspace uses, and builds left by crashed processes,
// and stops the watchers of sources with no base left. The caller holds
// the root lock.
func (m *Manager) gc(ctx context.Context) error {
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
	lost := map[string]*baseMeta{} // watch key -> a base of that source going now
	for _, e := range bases {
		if used[e.Name()] {
			continue
		}
		if b, err := m.readBase(e.Name()); err == nil {
			lost[watchKey(b.Source, b.Excludes)] = b
		}
		if err := unmountImage(m.layerDir(e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("remove base %s: %w", e.Name(), err))
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
	for key, b := range lost {
		if !m.hasBase(b.Source, b.Excludes) {
			m.stopWatcher(context.WithoutCancel(ctx), key)
		}
	}
	tmps, _ := os.ReadDir(filepath.Join(m.root, dirTmp))
	for _, e := range tmps {
		name := e.Name()
		if strings.HasPrefix(name, "gc-") {
			removeLayerDir(filepath.Join(m.root, dirTmp, name))
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
		removeLayerDir(filepath.Join(m.root, dirTmp, name))
		kunlock()
	}
	return errors.Join(errs...)
}

func randHex() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}
