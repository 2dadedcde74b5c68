package erofs

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Entry is one path of the tree an image holds.
type Entry struct {
	Path      string // slash-separated below the root; "" is the root itself
	Mode      uint32 // st_mode: a directory, regular file or symlink, and its permission bits
	UID, GID  uint32
	Size      int64 // regular files: bytes; others: ignored
	MtimeSec  int64
	MtimeNsec uint32
	Link      string // a hardlink: Path of the first entry of the same inode (a regular file)
}

// Options tune how Write fills the image.
type Options struct {
	// Reflink shares the whole blocks of files of at least CloneMin bytes
	// with the source (FICLONERANGE) where the filesystem allows it.
	Reflink bool
	// CloneMin is the smallest file worth a clone: below it, copying the
	// data costs less than the clone's fixed cost. 0 means DefaultCloneMin.
	CloneMin int64
}

// DefaultCloneMin is where cloning starts to pay, measured on XFS: a
// FICLONERANGE into the one image file costs about 45 µs and clones into
// one file run one at a time (the kernel locks it), while a copied block
// costs a read that overlaps with others and about 10 µs of the flush that
// makes the base durable (2.5 ms per MB here). 4, 8 and 16 KiB gave the
// same first env within noise; 16 KiB makes the fewest clones.
//
// Being the slowest part of an image, the clones start first: their data
// sits at the front of the image, right after the super block, so its
// place is known before the metadata is laid out (see Write).
const DefaultCloneMin = 16 << 10

// Stats says what Write did.
type Stats struct {
	Inodes      int
	Cloned      int   // files whose whole blocks were reflinked
	CopiedBytes int64 // file bytes read and written
	Size        int64 // the image's length
	// Reflinked is true when cloning worked for every file it was tried on
	// (and it was tried at least once).
	Reflinked bool
}

// memZoneMax is the largest file data kept in memory and written with the
// metadata in one write; larger files are copied in place.
const memZoneMax = 256 << 10

// How a file's whole blocks get into the image.
const (
	dataNone   = iota
	dataMem    // copied into the in-memory part of the image
	dataClone  // reflinked, copied in place when the clone fails
	dataStream // copied in place
)

type inode struct {
	e        *Entry
	hdr      inodeHeader
	inline   int   // tail bytes kept after the inode
	nblocks  int64 // whole blocks in the data area
	off      int64 // byte offset of the inode in the image
	how      int
	clone    *cloneJob // how == dataClone
	target   string    // symlinks
	children []dirent
	kids     []*inode // children[i] names kids[i]
	starts   []int    // directory block starts (planDir)
}

// cloneJob is a file whose whole blocks go to the front of the image, by
// clone where the filesystem can (copied otherwise). It is laid out and
// started before the metadata, so it keeps what it reads of the inline
// tail until the inode has its place.
type cloneJob struct {
	e      *Entry
	blk    uint32 // first data block
	inline int
	tail   []byte
}

// dataBlocks splits a file of size bytes into whole data blocks and the
// tail kept inline after its inode; a tail too long to share the inode's
// block gets a block of its own.
func dataBlocks(size int64) (nblocks int64, inline int) {
	nblocks = size / blockSize
	switch tail := int(size % blockSize); {
	case tail > maxInline:
		nblocks++
	case tail > 0:
		inline = tail
	}
	return nblocks, inline
}

// Write writes an image of the tree at root, whose paths are entries
// (parents before their children, the root first), to a new file at path.
// Regular files are read from root; symlink targets are read again. On
// any error the file is removed. The caller makes the image durable
// (fsync or syncfs) when it needs to be.
//
// The image is the super block, the data of the files to clone, then the
// metadata (the inodes with their inline tails), the small files' data
// and the large files copied in place. The clones run while the rest is
// planned and read.
func Write(ctx context.Context, path, root string, entries []Entry, o Options) (st Stats, err error) {
	if o.CloneMin <= 0 {
		o.CloneMin = DefaultCloneMin
	}
	w := &writer{root: root, opts: o}
	if err := w.planClones(entries); err != nil {
		return Stats{}, err
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return Stats{}, fmt.Errorf("create %s: %w", path, err)
	}
	defer func() {
		if cerr := unix.Close(fd); cerr != nil && err == nil {
			err = fmt.Errorf("close %s: %w", path, cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	w.out = fd
	if !o.Reflink {
		w.reflink.Store(-1)
	}
	// The clones run in one goroutine, since clones into one file do not
	// run in parallel (the kernel locks the image for each), beside the
	// planning and the copying; the first failure of either stops both.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		var buf []byte
		return w.runClones(gctx, &buf)
	})
	g.Go(func() error {
		if err := w.plan(entries); err != nil {
			return err
		}
		// Sized before the rest is written: growing it past data not yet
		// on disk would make XFS write that data out and wait for it.
		if err := unix.Ftruncate(fd, w.size); err != nil {
			return fmt.Errorf("size %s: %w", path, err)
		}
		return w.fill(gctx)
	})
	if err := g.Wait(); err != nil {
		return Stats{}, err
	}
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	for _, n := range w.inodes {
		if n.clone != nil {
			copy(w.mem[n.off+inodeSize-w.memBase:], n.clone.tail)
		}
	}
	var sb [superSize]byte
	w.super.encode(sb[:])
	if err := writeFull(fd, sb[:], superOffset); err != nil {
		return Stats{}, fmt.Errorf("write %s: %w", path, err)
	}
	if err := writeFull(fd, w.mem, w.memBase); err != nil {
		return Stats{}, fmt.Errorf("write %s: %w", path, err)
	}
	st = Stats{Inodes: len(w.inodes), Cloned: int(w.cloned.Load()), CopiedBytes: w.copied.Load(), Size: w.size}
	st.Reflinked = st.Cloned > 0 && w.cloneFailed.Load() == 0
	return st, nil
}

type writer struct {
	root    string
	opts    Options
	inodes  []*inode     // in entry order: the root first
	clones  []*cloneJob  // in entry order, their data from block 1 on
	groups  []*fileGroup // the other regular files with data, by directory
	super   superBlock
	memBase int64  // where the metadata starts: a block boundary after the clones' data
	mem     []byte // the image from memBase to the end of the small files' data
	size    int64
	out     int

	nextClone atomic.Int64 // the next job of clones to take

	reflink     atomic.Int32 // 0 untried, 1 works, -1 unavailable
	cloned      atomic.Int64
	cloneFailed atomic.Int64
	copied      atomic.Int64
}

// planClones places the data of the files to clone at the front of the
// image, in entry order: whole blocks from block 1 on, the super block's
// being block 0. The metadata starts after them.
func (w *writer) planClones(entries []Entry) error {
	if len(entries) == 0 || entries[0].Path != "" || entries[0].Mode&modeType != modeDir {
		return fmt.Errorf("image: the first entry must be the root directory: %w", ErrFormat)
	}
	blk := int64(1)
	if w.opts.Reflink {
		for i := range entries {
			e := &entries[i]
			if e.Link != "" || e.Mode&modeType != modeRegular || e.Size < w.opts.CloneMin {
				continue
			}
			nblocks, inline := dataBlocks(e.Size)
			if blk+nblocks > 1<<32-1 {
				return fmt.Errorf("%s: data past the 32-bit block addresses: %w", e.Path, ErrFormat)
			}
			w.clones = append(w.clones, &cloneJob{e: e, blk: uint32(blk), inline: inline})
			blk += nblocks
		}
	}
	w.memBase = blk * blockSize
	return nil
}

// plan lays the rest of the image out: every inode's place, layout and
// data blocks, and the directories' contents. Nothing is read from the
// source yet.
func (w *writer) plan(entries []Entry) error {
	byPath := make(map[string]*inode, len(entries))
	jobs := w.clones
	for i := range entries {
		e := &entries[i]
		if e.Link != "" {
			first, ok := byPath[e.Link]
			if !ok || first.e.Mode&modeType != modeRegular {
				return fmt.Errorf("hardlink %s to %s: not a regular file listed before it: %w", e.Path, e.Link, ErrFormat)
			}
			first.hdr.nlink++
			if err := w.addChild(byPath, e.Path, first); err != nil {
				return err
			}
			continue
		}
		n := &inode{e: e}
		n.hdr = inodeHeader{mode: e.Mode, uid: e.UID, gid: e.GID, mtime: e.MtimeSec, nsec: e.MtimeNsec,
			nlink: 1, ino: uint32(len(w.inodes) + 1)}
		if len(jobs) > 0 && jobs[0].e == e {
			n.how, n.clone, n.hdr.blkaddr = dataClone, jobs[0], jobs[0].blk
			jobs = jobs[1:]
		}
		switch e.Mode & modeType {
		case modeDir:
			n.hdr.nlink = 2
		case modeRegular:
			if e.Size < 0 {
				return fmt.Errorf("%s: negative size: %w", e.Path, ErrFormat)
			}
			n.hdr.size = e.Size
		case modeSymlink:
		default:
			return fmt.Errorf("%s: mode %o: only directories, regular files and symlinks: %w", e.Path, e.Mode, ErrFormat)
		}
		if e.Path != "" {
			if err := w.addChild(byPath, e.Path, n); err != nil {
				return err
			}
			if n.e.Mode&modeType == modeDir {
				byPath[parentOf(e.Path)].hdr.nlink++
			}
		}
		byPath[e.Path] = n
		w.inodes = append(w.inodes, n)
	}
	// Symlink targets decide their size; read them now (they are tiny).
	for _, n := range w.inodes {
		if n.e.Mode&modeType != modeSymlink {
			continue
		}
		t, err := readlink(w.root + "/" + n.e.Path)
		if err != nil {
			return fmt.Errorf("read symlink %s: %w", w.root+"/"+n.e.Path, err)
		}
		n.target = t
		n.hdr.size = int64(len(t))
	}
	root := w.inodes[0]
	for _, n := range w.inodes {
		if n.e.Mode&modeType != modeDir {
			continue
		}
		parent := root
		if n.e.Path != "" {
			parent = byPath[parentOf(n.e.Path)]
		}
		n.children = append(n.children, dirent{name: ".", ftype: ftDir}, dirent{name: "..", ftype: ftDir})
		n.kids = append(n.kids, n, parent)
		if err := sortDir(n); err != nil {
			return err
		}
		names := make([]string, len(n.children))
		for i, c := range n.children {
			names[i] = c.name
		}
		n.starts, n.hdr.size = planDir(names)
	}
	// After the clones' data: the inodes with their inline tails, then
	// the in-memory data, then the data copied in place.
	pos := w.memBase
	for _, n := range w.inodes {
		n.nblocks, n.inline = dataBlocks(n.hdr.size)
		n.hdr.layout = flatPlain
		if n.inline > 0 {
			n.hdr.layout = flatInline
		}
		pos = (pos + slotSize - 1) &^ (slotSize - 1)
		if need := int64(inodeSize + n.inline); pos%blockSize+need > blockSize {
			pos = (pos + blockSize - 1) &^ (blockSize - 1)
		}
		n.off = pos
		pos += int64(inodeSize + n.inline)
	}
	blk := (pos + blockSize - 1) / blockSize
	place := func(n *inode) {
		n.hdr.blkaddr = uint32(blk)
		blk += n.nblocks
	}
	for _, n := range w.inodes {
		if n.nblocks == 0 || n.how == dataClone {
			continue
		}
		switch {
		case n.e.Mode&modeType != modeRegular:
			n.how = dataMem
		case n.nblocks*blockSize <= memZoneMax:
			n.how = dataMem
		default:
			n.how = dataStream
		}
		if n.how == dataMem {
			place(n)
		}
	}
	memEnd := blk * blockSize
	for _, n := range w.inodes {
		if n.how == dataStream {
			place(n)
		}
	}
	if blk > 1<<32-1 {
		return fmt.Errorf("image of %d blocks: over the 32-bit block addresses: %w", blk, ErrFormat)
	}
	if w.nid(root) > 1<<16-1 {
		return fmt.Errorf("root nid %d: %w", w.nid(root), ErrFormat)
	}
	w.size = blk * blockSize
	w.mem = make([]byte, memEnd-w.memBase)
	byDir := map[string]*fileGroup{}
	for _, n := range w.inodes {
		if n.e.Mode&modeType != modeRegular || n.hdr.size == 0 || n.how == dataClone {
			continue
		}
		dir := parentOf(n.e.Path)
		g := byDir[dir]
		if g == nil {
			g = &fileGroup{dir: dir}
			byDir[dir] = g
			w.groups = append(w.groups, g)
		}
		g.files = append(g.files, n)
	}
	return nil
}

// fileGroup is the files of one directory that are read, not cloned: one
// lookup of the directory, then one of each name relative to it.
type fileGroup struct {
	dir   string
	files []*inode
}

// sortDir puts a directory's names, and the inodes they name, in byte
// order and refuses a name listed twice.
func sortDir(n *inode) error {
	type pair struct {
		d dirent
		k *inode
	}
	ps := make([]pair, len(n.children))
	for i := range ps {
		ps[i] = pair{n.children[i], n.kids[i]}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].d.name < ps[j].d.name })
	for i, p := range ps {
		if i > 0 && ps[i-1].d.name == p.d.name {
			return fmt.Errorf("directory %q: name %q listed twice: %w", n.e.Path, p.d.name, ErrFormat)
		}
		n.children[i], n.kids[i] = p.d, p.k
	}
	return nil
}

func (w *writer) addChild(byPath map[string]*inode, path string, n *inode) error {
	parent, ok := byPath[parentOf(path)]
	if !ok || parent.e.Mode&modeType != modeDir {
		return fmt.Errorf("%s: parent directory not listed before it: %w", path, ErrFormat)
	}
	name := path[len(parentOf(path)):]
	if len(name) > 0 && name[0] == '/' {
		name = name[1:]
	}
	if err := checkName(name); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var ft uint8
	switch n.e.Mode & modeType {
	case modeDir:
		ft = ftDir
	case modeRegular:
		ft = ftRegular
	case modeSymlink:
		ft = ftSymlink
	}
	parent.children = append(parent.children, dirent{name: name, ftype: ft})
	parent.kids = append(parent.kids, n)
	return nil
}

func parentOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			return path[:i]
		}
	}
	return ""
}

// nid is n's inode number in the image: its 32-byte slot counted from
// the start of the metadata.
func (w *writer) nid(n *inode) uint64 { return uint64((n.off - w.memBase) / slotSize) }

// fill writes the metadata into memory and every file's data that is not
// cloned: into memory or, for large files, into the image file in place.
func (w *writer) fill(ctx context.Context) error {
	now := time.Now()
	w.super = superBlock{rootNid: uint16(w.nid(w.inodes[0])), metaBlkaddr: uint32(w.memBase / blockSize),
		inodes: uint64(len(w.inodes)), buildTime: now.Unix(), buildNsec: uint32(now.Nanosecond()),
		blocks: uint32(w.size / blockSize)}
	rand.Read(w.super.uuid[:])
	for _, n := range w.inodes {
		n.hdr.encode(w.mem[n.off-w.memBase:])
		switch n.e.Mode & modeType {
		case modeDir:
			for i, k := range n.kids {
				n.children[i].nid = w.nid(k)
			}
			buf := make([]byte, n.hdr.size)
			encodeDir(buf, n.children, n.starts)
			w.putData(n, buf)
		case modeSymlink:
			w.putData(n, []byte(n.target))
		}
	}
	return w.copyFiles(ctx)
}

// putData places the data of a directory or symlink: whole blocks in the
// in-memory data area, the tail after the inode.
func (w *writer) putData(n *inode, data []byte) {
	whole := int64(len(data)) - int64(n.inline)
	if whole > 0 {
		copy(w.mem[int64(n.hdr.blkaddr)*blockSize-w.memBase:], data[:whole])
	}
	copy(w.mem[n.off+inodeSize-w.memBase:], data[whole:])
}

// runClones takes clone jobs until none is left. Where the filesystem
// cannot clone, the readers of copyFiles take them too.
func (w *writer) runClones(ctx context.Context, buf *[]byte) error {
	for {
		i := int(w.nextClone.Add(1) - 1)
		if i >= len(w.clones) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		j := w.clones[i]
		fd, err := w.open(unix.AT_FDCWD, j.e, w.path(j.e))
		if err != nil {
			return err
		}
		j.tail = make([]byte, j.inline)
		err = w.copyFile(ctx, j.e, fd, fileDst{dst: int64(j.blk) * blockSize, clone: true, tail: j.tail}, buf)
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
}

// copyFiles reads every regular file that is not cloned into the image,
// several at once: their cost is opens and reads, which overlap well.
// Where cloning is unavailable, they then help copy the clone jobs.
func (w *writer) copyFiles(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range min(2*runtime.NumCPU(), 16) {
		g.Go(func() error {
			var buf []byte
			for i := int(next.Add(1) - 1); i < len(w.groups); i = int(next.Add(1) - 1) {
				if err := w.copyGroup(ctx, w.groups[i], &buf); err != nil {
					return err
				}
			}
			if w.reflink.Load() < 0 {
				return w.runClones(ctx, &buf)
			}
			return nil
		})
	}
	return g.Wait()
}

func (w *writer) path(e *Entry) string { return w.root + "/" + e.Path }

// copyGroup copies the files of one directory, each opened relative to it.
func (w *writer) copyGroup(ctx context.Context, g *fileGroup, buf *[]byte) error {
	dir := w.root
	if g.dir != "" {
		dir += "/" + g.dir
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	for _, n := range g.files {
		if err := ctx.Err(); err != nil {
			return err
		}
		fd, err := w.open(dfd, n.e, n.e.Path[len(g.dir):])
		if err != nil {
			return err
		}
		f := fileDst{tail: w.mem[n.off+inodeSize-w.memBase:][:n.inline]}
		if dst := int64(n.hdr.blkaddr) * blockSize; n.how == dataMem {
			f.mem = w.mem[dst-w.memBase:][:n.hdr.size-int64(n.inline)]
		} else {
			f.dst = dst
		}
		err = w.copyFile(ctx, n.e, fd, f, buf)
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return nil
}

// open opens e's source, named name relative to dir, for reading without
// moving its access time where allowed.
func (w *writer) open(dir int, e *Entry, name string) (int, error) {
	if name != "" && name[0] == '/' && dir != unix.AT_FDCWD {
		name = name[1:]
	}
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dir, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dir, name, flags, 0)
	}
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", w.path(e), err)
	}
	return fd, nil
}

// fileDst is where a regular file's data goes.
type fileDst struct {
	mem   []byte // its whole blocks, held in memory; or, when nil,
	dst   int64  // their offset in the image file
	clone bool   // shared with the source where the filesystem can
	tail  []byte // the tail kept inline after the inode
}

// copyFile puts one regular file's data into the image. A file that
// shrank since it was listed reads as zeros past its new end.
func (w *writer) copyFile(ctx context.Context, e *Entry, fd int, f fileDst, buf *[]byte) error {
	p := w.path(e)
	whole := e.Size - int64(len(f.tail))
	if f.mem != nil {
		if err := readFull(fd, f.mem, 0); err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		w.copied.Add(whole)
	} else if whole > 0 {
		cloned := false
		length := e.Size &^ (blockSize - 1)
		if f.clone && length > 0 && w.reflink.Load() >= 0 {
			err := unix.IoctlFileCloneRange(w.out, &unix.FileCloneRange{Src_fd: int64(fd),
				Src_length: uint64(length), Dest_offset: uint64(f.dst)})
			switch {
			case err == nil:
				cloned = true
				w.reflink.CompareAndSwap(0, 1)
				w.cloned.Add(1)
				// A tail that is not inline is its own partial block.
				if whole > length {
					if err := w.stream(ctx, fd, buf, length, f.dst+length, whole-length); err != nil {
						return fmt.Errorf("copy %s: %w", p, err)
					}
				}
			case cloneUnsupported(err):
				w.reflink.Store(-1)
				w.cloneFailed.Add(1)
			default:
				w.cloneFailed.Add(1) // for example the file shrank: copy what is there
			}
		}
		if !cloned {
			if err := w.stream(ctx, fd, buf, 0, f.dst, whole); err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
		}
	}
	if len(f.tail) > 0 {
		if err := readFull(fd, f.tail, whole); err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		w.copied.Add(int64(len(f.tail)))
	}
	return nil
}

// stream copies length bytes at off of fd to dst in the image through buf,
// a chunk at a time, so that a cancelled Write stops within a large file.
func (w *writer) stream(ctx context.Context, fd int, buf *[]byte, off, dst, length int64) error {
	if *buf == nil {
		*buf = make([]byte, 1<<20)
	}
	for length > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := (*buf)[:min(int64(len(*buf)), length)]
		clear(chunk)
		if err := readFull(fd, chunk, off); err != nil {
			return err
		}
		if err := writeFull(w.out, chunk, dst); err != nil {
			return err
		}
		w.copied.Add(int64(len(chunk)))
		off += int64(len(chunk))
		dst += int64(len(chunk))
		length -= int64(len(chunk))
	}
	return nil
}

// readFull fills p from fd at off; past the end of the file p stays as it
// is (zero).
func readFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(fd, p, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func writeFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func readlink(path string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlink(path, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// cloneUnsupported reports an error that means this filesystem (or this
// pair of files) cannot share blocks at all.
func cloneUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}
