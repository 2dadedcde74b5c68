package overlayfs

import (
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A watcher process keeps one inotify instance on one source (for one
// exclude list) from before a Create read the source, and answers over a
// unix socket under root/watch what changed since a base was known to
// show the source. A further env of an unchanged source then costs one
// round trip instead of a stat per file, and a changed one the paths that
// changed instead of a walk. Whatever the watcher cannot vouch for (it is
// not running, events were lost, the source was replaced) sends Create
// back to reading the source.

// watchHandoff is what a Create passes to the watcher process it starts,
// gob-encoded on stdin (gob keeps paths as bytes; JSON would mangle names
// that are not UTF-8). The inotify instance is fd 3, the held lock fd 4.
type watchHandoff struct {
	Root     string // the Manager's root
	Key      string // see watchKey
	Source   string
	Dev, Ino uint64 // the source directory's identity
	Excludes []string
	Class    string // the first mark: Base shows the source as of change 0
	Base     string
	Dirs     map[int32]string
	// Sync lists bases to flush and mark durable (see syncLater). Alone,
	// without a Key, it makes the process a syncer that exits when done.
	Sync []string
}

const (
	watchFDInotify = 3
	watchFDLock    = 4
)

// watchRequest is one request to a watcher: "state" (the class's mark and
// what changed since), "mark" (Base shows the source as of change Seq),
// "sync" (flush Base and mark it durable; answered at once) or "stop".
type watchRequest struct {
	Op    string
	Class string
	Base  string
	Seq   uint64
}

// watchReply answers a watchRequest. Every answer is given after reading
// every event already queued, so it covers every change completed before
// the request was sent.
type watchReply struct {
	Err      string
	Dev, Ino uint64 // the watched directory
	Seq      uint64 // changes seen so far
	Base     string // the class's mark, "" for none
	MarkSeq  uint64
	Known    bool // Changed itemizes every change since the mark
	Changed  []pathChange
}

// watchIdleCheck is how often a watcher looks whether any env of its
// source is left, in case the last one went without telling it.
const watchIdleCheck = 30 * time.Second

// watcher is the state of a watcher process.
type watcher struct {
	h     watchHandoff
	ino   syscall.RawConn
	buf   []byte
	quit  chan string
	mu    sync.Mutex
	t     *tracker
	stale error
	marks map[string]watchMark

	m       *Manager
	logf    func(string, ...any)
	syncing map[string]bool // bases being flushed (under mu)
	syncWG  sync.WaitGroup  // flushes running: waited for before exiting
}

type watchMark struct {
	base string
	seq  uint64
}

// RunWatcher is the body of a watcher process, which a [Manager] made
// [WithWatcher] starts on its own: it reads its state from stdin and its
// inotify instance and lock from fds 3 and 4 (the lock file names its
// pid). It returns when ctx is done, when it can no longer vouch for its
// source (events lost, source gone) or when no env of its source is left.
// It never writes to the source.
func RunWatcher(ctx context.Context, logf func(string, ...any)) error {
	var h watchHandoff
	if err := gob.NewDecoder(os.Stdin).Decode(&h); err != nil {
		return fmt.Errorf("read watcher handoff: %w", err)
	}
	if h.Key == "" {
		return runSyncer(ctx, h, logf)
	}
	lock := os.NewFile(watchFDLock, "lock")
	defer lock.Close()
	unix.CloseOnExec(watchFDLock)
	unix.CloseOnExec(watchFDInotify)
	// exec made the descriptor blocking; the poller needs it not to be.
	if err := unix.SetNonblock(watchFDInotify, true); err != nil {
		return fmt.Errorf("watcher inotify descriptor: %w", err)
	}
	ino := os.NewFile(watchFDInotify, "inotify")
	defer ino.Close()
	rc, err := ino.SyscallConn()
	if err != nil {
		return fmt.Errorf("watcher inotify descriptor: %w", err)
	}
	ex, err := sourceExcluder(h.Source, h.Root, h.Excludes)
	if err != nil {
		return err
	}
	t, err := newTracker(h.Source, watchFDInotify, ex, h.Dirs)
	if err != nil {
		return err
	}
	m := &Manager{root: h.Root, bootID: readBootID}
	w := &watcher{h: h, ino: rc, buf: make([]byte, 64<<10), quit: make(chan string, 1), t: t,
		marks: map[string]watchMark{h.Class: {base: h.Base}}, m: m, logf: logf, syncing: map[string]bool{}}
	// Flushes outlive a stop: a base's mark must not be lost because its
	// last env went while it was flushed (marking a collected base is a
	// no-op).
	defer w.syncWG.Wait()
	for _, id := range h.Sync {
		w.sync(id)
	}
	sock := m.watchPath(h.Key, ".sock")
	ln, err := listenUnix(sock)
	if err != nil {
		return err
	}
	defer func() {
		ln.Close()
		os.Remove(sock)
	}()
	logf("watching %s (%d directories)", h.Source, len(h.Dirs))

	go w.readEvents()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go w.serve(c)
		}
	}()
	tick := time.NewTicker(watchIdleCheck)
	defer tick.Stop()
	for {
		if !m.hasBase(h.Source, h.Excludes) {
			logf("stopping watch of %s: no env of it is left", h.Source)
			return nil
		}
		select {
		case <-ctx.Done():
			logf("stopping watch of %s: %v", h.Source, ctx.Err())
			return nil
		case why := <-w.quit:
			logf("stopping watch of %s: %s", h.Source, why)
			return nil
		case <-tick.C:
		}
	}
}

func (w *watcher) stop(why string) {
	select {
	case w.quit <- why:
	default:
	}
}

// readEvents applies events as they come, so the queue never fills while
// nobody asks.
func (w *watcher) readEvents() {
	w.ino.Read(func(fd uintptr) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.drainLocked(int(fd)) != nil
	})
}

// drainLocked applies every queued event; the caller holds w.mu. After a
// failure the watcher vouches for nothing and stops.
func (w *watcher) drainLocked(fd int) error {
	for w.stale == nil {
		n, err := unix.Read(fd, w.buf)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil
		case err != nil:
			w.stale = fmt.Errorf("%w: read events: %w", errStale, err)
		default:
			w.stale = w.t.handle(w.buf[:n])
		}
	}
	w.stop(w.stale.Error())
	return w.stale
}

func (w *watcher) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var req watchRequest
	if err := gob.NewDecoder(c).Decode(&req); err != nil {
		return
	}
	rep := w.answer(req)
	gob.NewEncoder(c).Encode(rep)
	if req.Op == "stop" {
		w.stop("asked to stop: the source's last env is gone")
	}
}

func (w *watcher) answer(req watchRequest) watchReply {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ino.Control(func(fd uintptr) { w.drainLocked(int(fd)) })
	if w.stale != nil {
		return watchReply{Err: w.stale.Error()}
	}
	rep := watchReply{Dev: w.h.Dev, Ino: w.h.Ino, Seq: w.t.seq}
	switch req.Op {
	case "state":
		if m, ok := w.marks[req.Class]; ok {
			rep.Base, rep.MarkSeq = m.base, m.seq
			rep.Changed, rep.Known = w.t.since(m.seq)
		}
	case "mark":
		if m, ok := w.marks[req.Class]; !ok || req.Seq >= m.seq {
			w.marks[req.Class] = watchMark{base: req.Base, seq: req.Seq}
		}
		oldest := req.Seq
		for _, m := range w.marks {
			oldest = min(oldest, m.seq)
		}
		w.t.prune(oldest)
	case "sync":
		w.syncLocked(req.Base)
	case "stop":
	default:
		rep.Err = fmt.Sprintf("unknown request %q", req.Op)
	}
	return rep
}

// sync flushes base id and marks it durable, in the background; one
// flush per base at a time.
func (w *watcher) sync(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.syncLocked(id)
}

func (w *watcher) syncLocked(id string) {
	if id == "" || w.syncing[id] {
		return
	}
	w.syncing[id] = true
	w.syncWG.Add(1)
	go func() {
		defer w.syncWG.Done()
		start := time.Now()
		// Not bound to the watcher's context: a flush is short and must
		// finish for the mark to be written.
		err := w.m.markDurable(context.Background(), id)
		w.mu.Lock()
		delete(w.syncing, id)
		w.mu.Unlock()
		if err != nil {
			w.logf("base %s: %v", id, err)
			return
		}
		w.logf("base %s: on disk after %s", id, time.Since(start).Round(time.Millisecond))
	}()
}

// listenUnix listens on a unix socket at path, replacing a stale one
// atomically: a client never finds the path missing or not listening
// while the watcher runs.
func listenUnix(path string) (net.Listener, error) {
	tmp := path + "." + strconv.Itoa(os.Getpid())
	os.Remove(tmp)
	addr, done, err := unixAddr(tmp)
	if err != nil {
		return nil, err
	}
	defer done()
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("watcher socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("watcher socket: %w", err)
	}
	return ln, nil
}
