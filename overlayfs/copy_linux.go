package overlayfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// entry is one filesystem object found by a walk of a tree.
type entry struct {
	rel  string // slash-separated path below the walked root, "" for the root
	st   unix.Stat_t
	link string // hardlink: rel of the first path of the same inode
}

func (e *entry) typ() uint32 { return e.st.Mode & unix.S_IFMT }

// walkResult is a whole tree as seen by [walkTree].
type walkResult struct {
	tree    *dirNode // the walked directory and everything below it
	entries []*entry // parents before children
	files   int
	bytes   int64
	skipped []string // sockets, FIFOs and devices, left out of every copy
}

// walkTree lists root without following symlinks, parents before
// children. Excluded paths are not descended into, and special files are
// recorded in skipped instead of entries so that no copy ever opens a FIFO
// (which would hang). Directories are read by several goroutines: on a
// large tree the walk is stat after stat, and those overlap well. With a
// watch set, each directory is watched before it is read (see
// [watchSet]).
func walkTree(ctx context.Context, root string, ex *excluder, ws *watchSet) (*walkResult, error) {
	return walkFrom(ctx, root, "", ex, ws)
}

// walkFrom is [walkTree] of the directory rel below root; entries are
// named relative to root.
func walkFrom(ctx context.Context, root, rel string, ex *excluder, ws *watchSet) (*walkResult, error) {
	rootNode := &dirNode{e: &entry{rel: rel}}
	if err := unix.Lstat(join(root, rel), &rootNode.e.st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", join(root, rel), err)
	}
	if rootNode.e.typ() != unix.S_IFDIR {
		return nil, fmt.Errorf("source %s: not a directory", join(root, rel))
	}
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		sem   = make(chan struct{}, 2*runtime.NumCPU())
	)
	fail := func(err error) { once.Do(func() { first = err }) }
	var visit func(n *dirNode)
	visit = func(n *dirNode) {
		defer wg.Done()
		if err := ctx.Err(); err != nil {
			fail(err)
			return
		}
		if err := n.read(root, ex, ws); err != nil {
			fail(err)
			return
		}
		for _, sub := range n.subdirs {
			wg.Add(1)
			select {
			case sem <- struct{}{}:
				go func() { visit(sub); <-sem }()
			default:
				visit(sub)
			}
		}
	}
	wg.Add(1)
	visit(rootNode)
	wg.Wait()
	if first != nil {
		return nil, first
	}
	res := &walkResult{tree: rootNode}
	inodes := map[[2]uint64]string{}
	var collect func(n *dirNode)
	collect = func(n *dirNode) {
		res.entries = append(res.entries, n.e)
		res.skipped = append(res.skipped, n.skipped...)
		si := 0
		for _, e := range n.children {
			if e.typ() == unix.S_IFDIR {
				collect(n.subdirs[si])
				si++
				continue
			}
			if e.typ() == unix.S_IFREG {
				if e.st.Nlink > 1 {
					k := [2]uint64{e.st.Dev, e.st.Ino}
					if first, ok := inodes[k]; ok {
						e.link = first
					} else {
						inodes[k] = e.rel
					}
				}
				if e.link == "" {
					res.files++
					res.bytes += e.st.Size
				}
			}
			res.entries = append(res.entries, e)
		}
	}
	collect(rootNode)
	return res, nil
}

// dirNode is one directory of a walk with what it holds, in name order.
type dirNode struct {
	e        *entry
	children []*entry
	subdirs  []*dirNode // the directory children, in the same order
	skipped  []string
}

// read lists the directory and stats its entries relative to its
// descriptor: one path lookup per directory, not one per entry.
func (n *dirNode) read(root string, ex *excluder, ws *watchSet) error {
	dir := join(root, n.e.rel)
	fd, err := openDir(dir)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", dir, err)
	}
	defer unix.Close(fd)
	ws.add(fd, n.e.rel)
	// The directory's own stamp is taken after its watch is in place, so
	// an entry added from now on is seen by the watch or by this walk.
	if err := unix.Fstat(fd, &n.e.st); err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	names, err := dirNames(fd)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", dir, err)
	}
	sort.Strings(names)
	for _, name := range names {
		e := &entry{rel: join2(n.e.rel, name)}
		if err := unix.Fstatat(fd, name, &e.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed while we walked
			}
			return fmt.Errorf("stat %s: %w", dir+"/"+name, err)
		}
		if ex.match(e.rel, e.typ() == unix.S_IFDIR) {
			continue
		}
		switch e.typ() {
		case unix.S_IFDIR:
			n.children = append(n.children, e)
			n.subdirs = append(n.subdirs, &dirNode{e: e})
		case unix.S_IFREG, unix.S_IFLNK:
			n.children = append(n.children, e)
		default:
			n.skipped = append(n.skipped, e.rel)
		}
	}
	return nil
}

// openDir opens a directory for reading without following a symlink and,
// where allowed, without moving its access time.
func openDir(path string) (int, error) {
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Open(path, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Open(path, flags, 0)
	}
	return fd, err
}

// dirNames returns the names in the directory open at fd, "." and ".."
// left out.
func dirNames(fd int) ([]string, error) {
	buf := make([]byte, 8<<10)
	var names []string
	for {
		n, err := unix.ReadDirent(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// copier copies entries from one tree to another, preserving modes,
// ownership, timestamps, symlinks and hardlinks. Regular files are cloned
// with FICLONE while the filesystem allows it and copied with
// copy_file_range otherwise, by several workers at once. On a tree of
// small files the cost is the filesystem's work per inode (create, clone,
// set times), so every call goes relative to an open directory: a path
// lookup per directory, not per file.
type copier struct {
	src, dst string
	reflink  atomic.Int32 // 0 untried, 1 works, -1 unavailable
	noClone  bool
	asRoot   bool
	uid, gid uint32 // what a new file gets without chown
	umask    uint32

	doneFiles atomic.Int64
	doneBytes atomic.Int64
}

func newCopier(src, dst string, tryReflink bool) *copier {
	return &copier{src: src, dst: dst, noClone: !tryReflink, asRoot: os.Geteuid() == 0,
		uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), umask: readUmask()}
}

// reflinked reports whether at least one file was cloned and none copied.
func (c *copier) reflinked() bool { return c.reflink.Load() == 1 }

func (c *copier) srcPath(rel string) string { return join(c.src, rel) }
func (c *copier) dstPath(rel string) string { return join(c.dst, rel) }

func join(root, rel string) string {
	if rel == "" {
		return root
	}
	return root + "/" + rel
}

func baseName(rel string) string { return rel[strings.LastIndexByte(rel, '/')+1:] }

// copyChunk is how many entries of one directory a worker copies before
// the rest of that directory is handed to other workers.
const copyChunk = 128

// copyTree copies every entry of w into c.dst, which must exist and be
// empty. Each directory is one task (more for large ones) that makes its
// subdirectories and copies its files; subdirectories become tasks of
// their own. Hardlinks follow once every file exists, and directory
// metadata comes last, deepest first, so read-only directories can be
// filled and their mtimes survive.
func (c *copier) copyTree(ctx context.Context, w *walkResult, prog *progress) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		sem   = make(chan struct{}, min(4*runtime.NumCPU(), 16))
	)
	fail := func(err error) { once.Do(func() { first = err; cancel() }) }
	var task func(n *dirNode, lo int)
	spawn := func(n *dirNode, lo int) {
		wg.Add(1)
		select {
		case sem <- struct{}{}:
			go func() { task(n, lo); <-sem }()
		default:
			task(n, lo)
		}
	}
	task = func(n *dirNode, lo int) {
		defer wg.Done()
		if ctx.Err() != nil {
			return
		}
		hi := min(lo+copyChunk, len(n.children))
		if lo == 0 {
			for next := hi; next < len(n.children); next += copyChunk {
				spawn(n, next)
			}
		}
		if err := c.copyDirPart(ctx, n, lo, hi, prog); err != nil {
			fail(err)
			return
		}
		if lo == 0 {
			for _, sub := range n.subdirs {
				spawn(sub, 0)
			}
		}
	}
	wg.Add(1)
	task(w.tree, 0)
	wg.Wait()
	if first != nil {
		return first
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, e := range w.entries {
		if e.link == "" {
			continue
		}
		if err := unix.Link(c.dstPath(e.link), c.dstPath(e.rel)); err != nil {
			// Hardlinks are kept "where possible": a copy is still correct.
			if err := c.copyEntry(e); err != nil {
				return err
			}
		}
	}
	for i := len(w.entries) - 1; i >= 0; i-- {
		if e := w.entries[i]; e.typ() == unix.S_IFDIR {
			if err := setMeta(c.dstPath(e.rel), &e.st, false, c.asRoot); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyDirPart copies children lo to hi of directory n. The part holding
// the first child also makes all of n's subdirectories, before their own
// tasks start.
func (c *copier) copyDirPart(ctx context.Context, n *dirNode, lo, hi int, prog *progress) error {
	sdir, err := unix.Open(c.srcPath(n.e.rel), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", c.srcPath(n.e.rel), err)
	}
	defer unix.Close(sdir)
	ddir, err := unix.Open(c.dstPath(n.e.rel), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", c.dstPath(n.e.rel), err)
	}
	defer unix.Close(ddir)
	if lo == 0 {
		for _, sub := range n.subdirs {
			if err := unix.Mkdirat(ddir, baseName(sub.e.rel), 0o700); err != nil {
				return fmt.Errorf("create directory %s: %w", c.dstPath(sub.e.rel), err)
			}
		}
	}
	for _, e := range n.children[lo:hi] {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if e.typ() == unix.S_IFDIR || e.link != "" {
			continue
		}
		name := baseName(e.rel)
		if err := c.copyAt(sdir, name, ddir, name, e); err != nil {
			return err
		}
		prog.tick(c)
	}
	return nil
}

// copyEntry copies one file or symlink by path.
func (c *copier) copyEntry(e *entry) error {
	return c.copyAt(unix.AT_FDCWD, c.srcPath(e.rel), unix.AT_FDCWD, c.dstPath(e.rel), e)
}

// copyAt copies the file or symlink e, named sname relative to sdir and
// dname relative to ddir.
func (c *copier) copyAt(sdir int, sname string, ddir int, dname string, e *entry) error {
	switch e.typ() {
	case unix.S_IFLNK:
		target, err := readlinkAt(sdir, sname)
		if err != nil {
			return fmt.Errorf("read symlink %s: %w", c.srcPath(e.rel), err)
		}
		if err := unix.Symlinkat(target, ddir, dname); err != nil {
			return fmt.Errorf("create symlink %s: %w", c.dstPath(e.rel), err)
		}
		return setMeta(c.dstPath(e.rel), &e.st, true, c.asRoot)
	case unix.S_IFREG:
		if err := c.copyFile(sdir, sname, ddir, dname, e); err != nil {
			return err
		}
		c.doneFiles.Add(1)
		c.doneBytes.Add(e.st.Size)
	}
	return nil
}

func readlinkAt(dir int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dir, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

func (c *copier) copyFile(sdir int, sname string, ddir int, dname string, e *entry) error {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	in, err := unix.Openat(sdir, sname, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		in, err = unix.Openat(sdir, sname, flags, 0)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", c.srcPath(e.rel), err)
	}
	defer unix.Close(in)
	out, err := unix.Openat(ddir, dname, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, e.st.Mode&0o777)
	if err != nil {
		return fmt.Errorf("create %s: %w", c.dstPath(e.rel), err)
	}
	if err := c.fill(in, out, e.st.Size); err != nil {
		unix.Close(out)
		return fmt.Errorf("copy %s: %w", c.srcPath(e.rel), err)
	}
	if err := c.setMetaFd(out, e); err != nil {
		unix.Close(out)
		return err
	}
	if err := unix.Close(out); err != nil {
		return fmt.Errorf("close %s: %w", c.dstPath(e.rel), err)
	}
	return nil
}

// fill writes the contents of in to the empty file out.
func (c *copier) fill(in, out int, size int64) error {
	if size == 0 {
		return nil
	}
	if !c.noClone && c.reflink.Load() >= 0 {
		err := unix.IoctlFileClone(out, in)
		if err == nil {
			c.reflink.CompareAndSwap(0, 1)
			return nil
		}
		if !cloneUnsupported(err) {
			return err
		}
		c.reflink.Store(-1)
	}
	var done int64
	for done < size {
		n, err := unix.CopyFileRange(in, nil, out, nil, int(min(size-done, 1<<30)), 0)
		if err != nil {
			if done == 0 && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) ||
				errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				return plainCopy(in, out)
			}
			return err
		}
		if n == 0 {
			break // file shrank while we copied
		}
		done += int64(n)
	}
	return nil
}

func cloneUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}

func plainCopy(in, out int) error {
	buf := make([]byte, 256<<10)
	for {
		n, err := unix.Read(in, buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if n == 0 {
			return nil
		}
		for p := buf[:n]; len(p) > 0; {
			m, err := unix.Write(out, p)
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return err
			}
			p = p[m:]
		}
	}
}

// setMetaFd applies ownership, mode and timestamps to a regular file just
// created with st's permission bits. On a tree of small files these calls
// are most of the cost, so each is made only when the new file differs.
// Ownership goes first because chown clears the setuid and setgid bits.
func (c *copier) setMetaFd(fd int, e *entry) error {
	st := &e.st
	chown := c.asRoot && (st.Uid != c.uid || st.Gid != c.gid)
	if chown {
		if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", c.dstPath(e.rel), err)
		}
	}
	want := st.Mode & 0o7777
	if want&0o7000 != 0 || want&c.umask != 0 {
		if err := unix.Fchmod(fd, want); err != nil {
			return fmt.Errorf("chmod %s: %w", c.dstPath(e.rel), err)
		}
	}
	ts := [2]unix.Timespec{st.Atim, st.Mtim}
	// utimensat(fd, NULL, ...) is futimens: no second path lookup.
	if _, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0); errno != 0 {
		return fmt.Errorf("set times of %s: %w", c.dstPath(e.rel), errno)
	}
	return nil
}

// readUmask returns the process umask without changing it (reading it
// with umask(2) would briefly change it for every thread).
func readUmask() uint32 {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return uint32(n)
				}
			}
		}
	}
	return 0o777 // unknown: always chmod
}

// setMeta applies ownership, mode and timestamps to a path; symlinks have
// no mode of their own.
func setMeta(path string, st *unix.Stat_t, symlink, asRoot bool) error {
	if asRoot {
		if err := unix.Fchownat(unix.AT_FDCWD, path, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	flags := 0
	if symlink {
		flags = unix.AT_SYMLINK_NOFOLLOW
	} else if err := unix.Chmod(path, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, flags); err != nil {
		return fmt.Errorf("set times of %s: %w", path, err)
	}
	return nil
}

// progress reports a long copy on a terminal: nothing for copies that end
// within a second, one rewritten line otherwise.
type progress struct {
	w     io.Writer
	what  string
	files int
	bytes int64
	start time.Time

	mu    sync.Mutex
	last  time.Time
	shown bool
}

func newProgress(w io.Writer, what string, wr *walkResult) *progress {
	if w == nil || !isTerminal(w) {
		return nil
	}
	now := time.Now()
	return &progress{w: w, what: what, files: wr.files, bytes: wr.bytes, start: now, last: now}
}

func (p *progress) tick(c *copier) {
	if p == nil {
		return
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if now.Sub(p.start) < time.Second || now.Sub(p.last) < 200*time.Millisecond {
		return
	}
	p.last = now
	p.shown = true
	fmt.Fprintf(p.w, "\r%s: %d/%d files, %d/%d MB", p.what, c.doneFiles.Load(), p.files,
		c.doneBytes.Load()>>20, p.bytes>>20)
}

func (p *progress) finish(c *copier) {
	if p == nil || !p.shown {
		return
	}
	fmt.Fprintf(p.w, "\r%s: %d files, %d MB in %s\n", p.what, c.doneFiles.Load(),
		c.doneBytes.Load()>>20, time.Since(p.start).Round(100*time.Millisecond))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// logSkipped notes the special files a snapshot of src leaves out.
func logSkipped(logf func(string, ...any), src string, w *walkResult) {
	for _, s := range w.skipped {
		logf("snapshot %s: skipping %q: sockets, FIFOs and devices are not copied", src, s)
	}
}

// snapshotTree copies src into dst (created here) and reports whether every
// regular file was reflinked. On any error dst is removed.
func snapshotTree(ctx context.Context, src, dst string, ex *excluder, tryReflink bool, progOut io.Writer, logf func(string, ...any)) (bool, error) {
	w, err := walkTree(ctx, src, ex, nil)
	if err != nil {
		return false, err
	}
	return copyWalked(ctx, src, dst, w, tryReflink, progOut, logf)
}

// copyWalked copies what a walk of src found into dst (created here). On
// any error dst is removed.
func copyWalked(ctx context.Context, src, dst string, w *walkResult, tryReflink bool, progOut io.Writer, logf func(string, ...any)) (reflinked bool, err error) {
	logSkipped(logf, src, w)
	if err := os.Mkdir(dst, 0o700); err != nil {
		return false, fmt.Errorf("create snapshot directory: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dst)
		}
	}()
	c := newCopier(src, dst, tryReflink)
	prog := newProgress(progOut, "snapshot "+filepath.Base(src), w)
	if err := c.copyTree(ctx, w, prog); err != nil {
		return false, fmt.Errorf("snapshot %s: %w", src, err)
	}
	prog.finish(c)
	return c.reflinked(), nil
}
