package overlayfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// watchMask is every way a path's content, metadata or name can change.
// Reads (IN_ACCESS, IN_OPEN, IN_CLOSE_NOWRITE) are left out: snapshots and
// envs read the source all the time. IN_CLOSE_WRITE catches a file written
// through a shared mapping before its descriptor is closed: writes through
// a mapping raise no IN_MODIFY.
const watchMask = unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CLOSE_WRITE | unix.IN_CREATE | unix.IN_DELETE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF |
	unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK

// errWatchLimit is wrapped when the kernel refuses another watch
// (fs.inotify.max_user_watches).
var errWatchLimit = errors.New("inotify watch limit reached (sysctl fs.inotify.max_user_watches)")

// addWatch watches the directory at path (a /proc/self/fd link for an
// open directory, so the watch is on exactly what was opened).
func addWatch(fd int, path string) (int32, error) {
	wd, err := unix.InotifyAddWatch(fd, path, watchMask)
	if errors.Is(err, unix.ENOSPC) {
		return 0, errWatchLimit
	}
	return int32(wd), err
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// zfsSuperMagic is ZFS on Linux's statfs type (x/sys has no name for it).
const zfsSuperMagic = 0x2fc12fc1

// watchableFS refuses the filesystem of the directory open at fd unless it
// is local: on network and FUSE filesystems changes made elsewhere raise
// no event here, and through an overlay changes made to its layers
// directly raise none either.
func watchableFS(fd int) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return err
	}
	switch uint32(fs.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.TMPFS_MAGIC, unix.RAMFS_MAGIC,
		unix.F2FS_SUPER_MAGIC, unix.BCACHEFS_SUPER_MAGIC, zfsSuperMagic:
		return nil
	}
	return fmt.Errorf("filesystem type %#x: not known to report every change to inotify", fs.Type)
}

// watchSet is the inotify instance a Create fills while it reads a source
// that has no watcher yet: each directory is watched before its entries
// are read, so from the instance's creation on, every change is either in
// what was read or in the instance's queue. The instance then passes to a
// new watcher process with the map of what it watches. A nil *watchSet
// watches nothing.
type watchSet struct {
	fd int

	mu   sync.Mutex
	dirs dirMap // watch descriptor -> directory, relative to the source
	err  error  // the first failure: the set cannot vouch for the source
}

func newWatchSet() (*watchSet, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	return &watchSet{fd: fd, dirs: dirMap{}}, nil
}

// add watches the directory open at fd, known as rel.
func (s *watchSet) add(fd int, rel string) {
	if s == nil {
		return
	}
	err := watchableFS(fd)
	var wd int32
	if err == nil {
		wd, err = addWatch(s.fd, fdPath(fd))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		err = s.dirs.claim(wd, rel)
	}
	if err != nil && s.err == nil {
		s.err = fmt.Errorf("watch %q: %w", rel, err)
	}
}

// addManifest watches every directory man records, before the manifest is
// checked against src: the check then vouches for the state as of the
// set's creation. A directory that is gone needs no watch (its parent's
// stamp shows it went).
func (s *watchSet) addManifest(src string, man manifest) {
	if s == nil {
		return
	}
	for _, e := range man {
		if e.s.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		fd, err := openDir(join(src, e.rel))
		if err != nil {
			continue
		}
		s.add(fd, e.rel)
		unix.Close(fd)
	}
}

// reset starts the set over with a new instance, for a walk after a check
// of an older manifest: a directory renamed since would otherwise have two
// names.
func (s *watchSet) reset() {
	if s == nil {
		return
	}
	unix.Close(s.fd)
	s.dirs, s.err = dirMap{}, nil
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	s.fd = fd
	if err != nil {
		s.err = fmt.Errorf("inotify: %w", err)
	}
}

func (s *watchSet) close() {
	if s != nil && s.fd >= 0 {
		unix.Close(s.fd)
	}
}

// dirMap maps watch descriptors to the directories they watch.
type dirMap map[int32]string

// claim records that wd watches rel. The kernel gives one descriptor per
// inode, so a second name for a watched directory (a bind mount inside the
// source) would make its changes ambiguous.
func (d dirMap) claim(wd int32, rel string) error {
	if prev, ok := d[wd]; ok && prev != rel {
		return fmt.Errorf("directory %q is also %q (a bind mount?): changes cannot be told apart", rel, prev)
	}
	d[wd] = rel
	return nil
}

// tracker turns a source's inotify events into the set of paths that
// changed, for a watcher process. Every change gets a sequence number;
// a mark (a base known to show the source as of some sequence number)
// plus the paths changed after it is the source's state. It is not safe
// for concurrent use.
type tracker struct {
	src    string
	fd     int // the inotify instance
	ex     *excluder
	dirs   dirMap
	rootWD int32

	seq     uint64
	changed map[string]pathSeq
	lost    uint64            // changes up to this number are not itemized
	moved   map[uint32]string // cookie -> directory moved away in this batch
}

// pathSeq is the last change to one path.
type pathSeq struct {
	seq  uint64
	tree bool
}

// maxTracked bounds the itemized changes: past it a thin layer is not
// made anyway (see maxThinPaths), so the tracker only says "many".
const maxTracked = maxThinPaths

func newTracker(src string, fd int, ex *excluder, dirs dirMap) (*tracker, error) {
	t := &tracker{src: src, fd: fd, ex: ex, dirs: dirs, rootWD: -1,
		changed: map[string]pathSeq{}, moved: map[uint32]string{}}
	for wd, rel := range dirs {
		if rel == "" {
			t.rootWD = wd
		}
	}
	if t.rootWD < 0 {
		return nil, errors.New("the source directory itself is not watched")
	}
	return t, nil
}

// errStale is wrapped by every event after which a watcher can no longer
// vouch for its source.
var errStale = errors.New("watch no longer covers the source")

// handle applies one read's worth of events.
func (t *tracker) handle(buf []byte) error {
	for len(buf) >= unix.SizeofInotifyEvent {
		wd := int32(binary.NativeEndian.Uint32(buf[0:4]))
		mask := binary.NativeEndian.Uint32(buf[4:8])
		cookie := binary.NativeEndian.Uint32(buf[8:12])
		end := unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(buf[12:16]))
		if end > len(buf) {
			return fmt.Errorf("%w: short inotify event", errStale)
		}
		name := buf[unix.SizeofInotifyEvent:end]
		for i, c := range name {
			if c == 0 {
				name = name[:i]
				break
			}
		}
		buf = buf[end:]
		if err := t.event(wd, mask, cookie, string(name)); err != nil {
			return err
		}
	}
	// A directory moved away whose IN_MOVED_TO did not follow left the
	// source: its watches would report changes under a name it lost.
	for cookie, rel := range t.moved {
		t.forget(rel)
		delete(t.moved, cookie)
	}
	return nil
}

func (t *tracker) event(wd int32, mask, cookie uint32, name string) error {
	switch {
	case mask&unix.IN_Q_OVERFLOW != 0:
		return fmt.Errorf("%w: events were lost (queue over sysctl fs.inotify.max_queued_events)", errStale)
	case mask&unix.IN_UNMOUNT != 0:
		return fmt.Errorf("%w: a filesystem in the source was unmounted", errStale)
	case mask&unix.IN_IGNORED != 0:
		delete(t.dirs, wd)
		if wd == t.rootWD {
			return fmt.Errorf("%w: the source directory is gone", errStale)
		}
		return nil
	}
	dir, ok := t.dirs[wd]
	if !ok {
		return nil // a watch being removed
	}
	if mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
		if wd == t.rootWD {
			return fmt.Errorf("%w: the source directory was removed or renamed", errStale)
		}
		return nil // the parent's watch reports it, with the name
	}
	if name == "" {
		t.record(dir, false) // the directory's own attributes
		return nil
	}
	rel := join2(dir, name)
	isDir := mask&unix.IN_ISDIR != 0
	if mask&(unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO) != 0 {
		t.record(dir, false) // its listing, and so its stamp, changed
	}
	if t.ex.match(rel, isDir) {
		return nil
	}
	tree := false
	if isDir {
		switch {
		case mask&unix.IN_MOVED_FROM != 0:
			t.moved[cookie] = rel
		case mask&unix.IN_MOVED_TO != 0:
			if old, ok := t.moved[cookie]; ok {
				delete(t.moved, cookie)
				t.rename(old, rel)
			} else if err := t.watchTree(rel); err != nil {
				return err
			}
			tree = true
		case mask&unix.IN_CREATE != 0:
			if err := t.watchTree(rel); err != nil {
				return err
			}
			tree = true
		}
	}
	t.record(rel, tree)
	return nil
}

func (t *tracker) record(rel string, tree bool) {
	t.seq++
	p, ok := t.changed[rel]
	if !ok && len(t.changed) >= maxTracked {
		t.lost = t.seq
		clear(t.changed)
		return
	}
	p.seq = t.seq
	p.tree = p.tree || tree
	t.changed[rel] = p
}

// since returns the paths changed after change number seq, or false when
// they are not all itemized.
func (t *tracker) since(seq uint64) ([]pathChange, bool) {
	if seq < t.lost {
		return nil, false
	}
	var out []pathChange
	for rel, p := range t.changed {
		if p.seq > seq {
			out = append(out, pathChange{Rel: rel, Tree: p.tree})
		}
	}
	return out, true
}

// prune forgets the changes up to seq: no mark needs them any more.
func (t *tracker) prune(seq uint64) {
	for rel, p := range t.changed {
		if p.seq <= seq {
			delete(t.changed, rel)
		}
	}
	t.lost = max(t.lost, seq)
}

// rename keeps the watches of a directory moved within the source under
// its new name.
func (t *tracker) rename(from, to string) {
	for wd, d := range t.dirs {
		if d == from || isBelow(d, from) {
			t.dirs[wd] = to + d[len(from):]
		}
	}
}

// forget drops the watches of a directory that left the source.
func (t *tracker) forget(rel string) {
	for wd, d := range t.dirs {
		if d == rel || isBelow(d, rel) {
			unix.InotifyRmWatch(t.fd, uint32(wd))
			delete(t.dirs, wd)
		}
	}
}

// watchTree watches a directory that appeared and every directory below
// it, each before it is listed, so nothing made inside it is missed. Its
// content is reported as one new tree, so it needs no listing of files.
func (t *tracker) watchTree(rel string) error {
	fd, err := openDir(join(t.src, rel))
	if err != nil {
		return nil // gone again, or no longer a directory: its parent's events say so
	}
	defer unix.Close(fd)
	err = watchableFS(fd)
	var wd int32
	if err == nil {
		wd, err = addWatch(t.fd, fdPath(fd))
	}
	if err == nil {
		err = t.dirs.claim(wd, rel)
	}
	if err != nil {
		return fmt.Errorf("%w: watch %q: %w", errStale, rel, err)
	}
	names, err := dirNames(fd)
	if err != nil {
		return nil
	}
	for _, name := range names {
		var st unix.Stat_t
		sub := join2(rel, name)
		if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR || t.ex.match(sub, true) {
			continue
		}
		if err := t.watchTree(sub); err != nil {
			return err
		}
	}
	return nil
}
