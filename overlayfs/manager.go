package overlayfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilo-dev/cilo/overlayfs/mounted"
)

// Mode says how a workspace's tree is made.
type Mode string

const (
	// ModeOverlay: an overlay mount over a shared base snapshot.
	ModeOverlay Mode = mounted.OverlayMode
	// ModeReflink: a private copy whose file data is shared by reflink.
	ModeReflink Mode = "reflink"
	// ModeCopy: a private plain copy.
	ModeCopy Mode = "copy"
)

// Workspace is one env's working tree.
type Workspace struct {
	ID     string   // caller-chosen, already validated: [a-z0-9-], <= 127 bytes
	Path   string   // the directory the env works in (the overlay mount point, or the copy)
	Mode   Mode     // how Path is made
	Source string   // the source directory it was made from
	Layers []string // base layer dirs, top first (empty for copy/reflink modes)
}

// Change is one path a workspace changed relative to its base.
type Change struct {
	Path string `json:"path"`
	Kind string `json:"kind"` // "added", "modified", "deleted"
}

// Change kinds.
const (
	Added    = "added"
	Modified = "modified"
	Deleted  = "deleted"
)

var (
	// ErrNotFound is returned (wrapped) for a workspace that does not exist.
	ErrNotFound = errors.New("workspace not found")
	// ErrExists is returned (wrapped) by Create for an id already in use.
	ErrExists = errors.New("workspace already exists")
	// ErrUnsupported is returned (wrapped) where workspaces cannot be made:
	// they need Linux (overlay mounts, reflinks, copy_file_range).
	ErrUnsupported = errors.New("workspaces are not supported on this system")
	// ErrSourcePath is returned (wrapped) by Create for a source whose
	// path is not UTF-8: it is kept in JSON metadata, which would change
	// it. Names inside the source may be any bytes.
	ErrSourcePath = errors.New("source path is not valid UTF-8: rename the directory or run from a path that is")
)

// Opt configures a [Manager].
type Opt func(*options)

type options struct {
	progress io.Writer
	logf     func(string, ...any)
	force    Mode
	watcher  func() *exec.Cmd
}

// WithProgress shows the progress of long snapshots on w when w is a
// terminal.
func WithProgress(w io.Writer) Opt { return func(o *options) { o.progress = w } }

// WithLogf sets where notes go (skipped sockets, fallbacks); lines are
// prefixed "overlayfs: ".
func WithLogf(f func(string, ...any)) Opt { return func(o *options) { o.logf = f } }

// WithForceMode makes every new workspace use mode m instead of the best the
// host supports (ModeReflink means: try reflink, copy where it fails). Tests
// use it to run the fallbacks on a host that can mount overlays.
func WithForceMode(m Mode) Opt { return func(o *options) { o.force = m } }

// WithWatcher lets Create start a watcher process per source (cmd returns
// the command that runs [RunWatcher]; for the cilo CLI, its hidden
// workspace-watch command). A watcher that has watched the source since
// its state was last read makes a further env of an unchanged source cost
// one round trip, and of a changed source the paths that changed, instead
// of a stat of every file. It exits when the source's last env is
// removed. Without this option every Create reads the source's state
// itself.
func WithWatcher(cmd func() *exec.Cmd) Opt { return func(o *options) { o.watcher = cmd } }

// CreateOptions are the per-source settings of a workspace.
type CreateOptions struct {
	Exclude []string // globs from .cilo/config.yml workspace.exclude, never copied
}

// Manager makes and tracks workspaces under one root. It is safe for
// concurrent use by many goroutines and many processes sharing a root: every
// change to metadata happens under an flock of root/lock, and a base
// snapshot is built by one process while the others wait for it.
type Manager struct {
	root string
	opts options

	probeOnce sync.Once
	overlayOK bool

	mountImg func(image, dir string) error // mountImage; tests make it fail
	noImage  atomic.Bool                   // an image failed to mount: directory snapshots from now on
	bootID   func() (string, error)        // readBootID; tests play other boots
}

// Layout under root:
//
//	lock                 flock guarding all metadata
//	locks/<base>.lock    held while base <base> is built
//	tmp/<base>/          a base being built
//	b/<base>/meta.json   an installed base: its state, parent, layers
//	b/<base>/manifest    the source state it shows
//	b/<base>/t/          the layer itself (lower dir): a directory, or
//	                     where image.erofs is mounted
//	b/<base>/image.erofs a full snapshot as an EROFS image
//	w/<id>/meta.json     a workspace
//	w/<id>/o/upper, work its overlay upper and work dirs (o/ is root's only)
//	w/<id>/m/            its mount point (ModeOverlay) or
//	w/<id>/tree/         its copy (ModeReflink, ModeCopy)
//	w/<id>/git/          its private git dir when the source is a worktree
//	watch/<key>.sock     a source's watcher (see RunWatcher)
//	watch/<key>.lock     held by that watcher; names its pid
//	watch/log            what the watchers did
const (
	dirBases = "b"
	dirWS    = "w"
	dirTmp   = "tmp"
	dirLocks = "locks"
	dirWatch = "watch"
)

// New returns a Manager keeping all its data under root.
func New(root string, opts ...Opt) (*Manager, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("workspace root %q: not an absolute path", root)
	}
	root = filepath.Clean(root)
	// Layer paths go into overlay mount options, where these are separators.
	if strings.ContainsAny(root, ",:\\\n") {
		return nil, fmt.Errorf("workspace root %q: must not contain , : \\ or newlines", root)
	}
	m := &Manager{root: root, mountImg: mountImage, bootID: readBootID}
	for _, o := range opts {
		o(&m.opts)
	}
	switch m.opts.force {
	case "", ModeOverlay, ModeReflink, ModeCopy:
	default:
		return nil, fmt.Errorf("workspace mode %q: unknown", m.opts.force)
	}
	if m.opts.logf == nil {
		m.opts.logf = func(string, ...any) {}
	}
	// Users reach their workspaces through w/ (mount points, copies, git
	// dirs) but never the layers: overlay reads lower and upper layers
	// with the mounter's credentials, and a user writing to a layer
	// directly would change every env stacked on it.
	for _, d := range []struct {
		name string
		perm os.FileMode
	}{{"", 0o755}, {dirBases, 0o700}, {dirWS, 0o755}, {dirTmp, 0o700}, {dirLocks, 0o700}, {dirWatch, 0o700}} {
		p := filepath.Join(root, d.name)
		if err := os.MkdirAll(p, d.perm); err != nil {
			return nil, fmt.Errorf("create workspace root: %w", err)
		}
		if err := os.Chmod(p, d.perm); err != nil {
			return nil, fmt.Errorf("create workspace root: %w", err)
		}
	}
	return m, nil
}

func (m *Manager) logf(format string, args ...any) {
	m.opts.logf("overlayfs: "+format, args...)
}

// wsMeta is what root/w/<id>/meta.json holds.
type wsMeta struct {
	Workspace
	Base    string    `json:"base"`
	Upper   string    `json:"upper,omitempty"`
	Work    string    `json:"work,omitempty"`
	GitDir  string    `json:"gitDir,omitempty"`
	Created time.Time `json:"created"`
}

func (m *Manager) wsDir(id string) string   { return filepath.Join(m.root, dirWS, id) }
func (m *Manager) baseDir(id string) string { return filepath.Join(m.root, dirBases, id) }
func (m *Manager) layerDir(id string) string {
	return filepath.Join(m.root, dirBases, id, "t")
}

func validID(id string) error {
	if id == "" || len(id) > 127 {
		return fmt.Errorf("workspace id %q: must be 1 to 127 bytes", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("workspace id %q: only a-z, 0-9 and - are allowed", id)
		}
	}
	return nil
}

func (m *Manager) readWS(id string) (*wsMeta, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(m.wsDir(id), "meta.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("workspace %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read workspace %q: %w", id, err)
	}
	var w wsMeta
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("read workspace %q: %w", id, err)
	}
	return &w, nil
}

// writeWS writes a workspace's metadata; durable adds an fsync, needed
// once the workspace is complete (a crash before that leaves a directory
// Remove cleans up).
func (m *Manager) writeWS(w *wsMeta, durable bool) error {
	return writeJSON(filepath.Join(m.wsDir(w.ID), "meta.json"), w, durable)
}

// writeJSON writes v by temp file and rename, so a reader never sees half a
// file; with durable, an fsync before the rename makes a crash leave the old
// or the new one.
func writeJSON(path string, v any, durable bool) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := syncIf(f, durable); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func syncIf(f *os.File, durable bool) error {
	if !durable {
		return nil
	}
	return f.Sync()
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}

// Get returns the workspace id without mounting it.
func (m *Manager) Get(ctx context.Context, id string) (*Workspace, error) {
	w, err := m.readWS(id)
	if err != nil {
		return nil, err
	}
	ws := w.Workspace
	return &ws, nil
}

// List returns every workspace under the root.
func (m *Manager) List(ctx context.Context) ([]*Workspace, error) {
	ents, err := os.ReadDir(filepath.Join(m.root, dirWS))
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	var out []*Workspace
	for _, e := range ents {
		w, err := m.readWS(e.Name())
		if errors.Is(err, ErrNotFound) {
			continue // being created or removed
		}
		if err != nil {
			return nil, err
		}
		ws := w.Workspace
		out = append(out, &ws)
	}
	return out, nil
}
