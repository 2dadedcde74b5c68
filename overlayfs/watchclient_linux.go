package overlayfs

import (
	"context"
	"crypto/sha256"
	"encoding/gob"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchKey names the watcher of a source and exclude list: excluded paths
// are not watched, so another list needs another watcher.
func watchKey(src string, excludes []string) string {
	h := sha256.Sum256(fmt.Appendf(nil, "cilo-watch-v1\x00%s\x00%q", src, excludes))
	return hex.EncodeToString(h[:8])
}

// watchPath is the socket (".sock"), lock (".lock") or log ("log" with an
// empty key) of the watcher for key.
func (m *Manager) watchPath(key, ext string) string {
	return filepath.Join(m.root, dirWatch, key+ext)
}

// unixAddr returns an address for a unix socket at path. Paths longer
// than a sockaddr_un holds go through /proc/self/fd of their directory;
// done releases that descriptor once the socket is bound or connected.
func unixAddr(path string) (addr string, done func(), err error) {
	if len(path) < len(unix.RawSockaddrUnix{}.Path) {
		return path, func() {}, nil
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("socket directory: %w", err)
	}
	return fdPath(fd) + "/" + filepath.Base(path), func() { unix.Close(fd) }, nil
}

// askWatcher sends one request to the watcher for key.
func (m *Manager) askWatcher(ctx context.Context, key string, req watchRequest) (*watchReply, error) {
	addr, done, err := unixAddr(m.watchPath(key, ".sock"))
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "unix", addr)
	done()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := gob.NewEncoder(c).Encode(req); err != nil {
		return nil, fmt.Errorf("ask watcher: %w", err)
	}
	var rep watchReply
	if err := gob.NewDecoder(c).Decode(&rep); err != nil {
		return nil, fmt.Errorf("ask watcher: %w", err)
	}
	if rep.Err != "" {
		return nil, fmt.Errorf("watcher: %s", rep.Err)
	}
	return &rep, nil
}

// watchStartWait bounds how long a Create waits for a watcher that another
// process is starting before it reads the source itself.
const watchStartWait = 250 * time.Millisecond

// findWatcher asks the watcher for key about class. Without one it
// returns the watcher's lock, now held: the caller is to start it. With
// neither, another process holds the lock: a watcher starting or stopping
// (its pid in the lock file), waited for briefly, or a Create reading the
// source to start one (no pid yet), not waited for.
func (m *Manager) findWatcher(ctx context.Context, key, class string) (*watchReply, *os.File) {
	path := m.watchPath(key, ".lock")
	for deadline := time.Now().Add(watchStartWait); ; {
		if rep, err := m.askWatcher(ctx, key, watchRequest{Op: "state", Class: class}); err == nil {
			return rep, nil
		}
		fd, err := lockFD(path, true)
		if err == nil {
			lock := os.NewFile(uintptr(fd), "watch lock")
			lock.Truncate(0) // no watcher pid until one runs
			return nil, lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) || ctx.Err() != nil {
			return nil, nil
		}
		if pid, _ := os.ReadFile(path); len(pid) == 0 {
			return nil, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startWatcher starts the watcher process for h.Key, handing it the watch
// set (which it now owns) and the held lock, and writes the watcher's pid
// into the lock file. It does not wait for it: the next Create does,
// briefly, if it comes too soon.
func (m *Manager) startWatcher(ws *watchSet, lock *os.File, h watchHandoff) error {
	defer lock.Close()
	ino := os.NewFile(uintptr(ws.fd), "inotify")
	defer ino.Close()
	ws.mu.Lock()
	h.Dirs = ws.dirs
	ws.mu.Unlock()
	cmd, err := m.spawnWatchCmd("watcher", h, ino, lock) // fds 3 and 4
	if err != nil {
		return err
	}
	// From now on a Create that finds the lock held waits for the watcher.
	lock.WriteAt([]byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0)
	go cmd.Wait() // reaps it in a long-lived caller
	return nil
}

// spawnWatchCmd starts the watcher command detached, handing it h on its
// stdin and extra as fds 3 on; what names the process in errors.
func (m *Manager) spawnWatchCmd(what string, h watchHandoff, extra ...*os.File) (*exec.Cmd, error) {
	mfd, err := unix.MemfdCreate("cilo-"+what+"-handoff", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	hand := os.NewFile(uintptr(mfd), "handoff")
	defer hand.Close()
	if err := gob.NewEncoder(hand).Encode(h); err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	if _, err := hand.Seek(0, 0); err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	log, err := os.OpenFile(m.watchPath("", "log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	defer log.Close()
	cmd := m.opts.watcher()
	cmd.Stdin = hand
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = extra
	cmd.Dir = "/" // keeps no filesystem busy
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s %s: %w", what, cmd.Path, err)
	}
	return cmd, nil
}

// markWatcher tells the watcher for key that base shows the source as of
// change seq. A watcher that went away meanwhile is no error: the next
// Create reads the source.
func (m *Manager) markWatcher(ctx context.Context, key, class, base string, seq uint64) {
	m.askWatcher(ctx, key, watchRequest{Op: "mark", Class: class, Base: base, Seq: seq})
}

// stopWatcher stops the watcher for key, if one runs.
func (m *Manager) stopWatcher(ctx context.Context, key string) {
	m.askWatcher(ctx, key, watchRequest{Op: "stop"})
}

// hasBase reports whether any base of src with excludes is installed,
// that is whether any env of it is left.
func (m *Manager) hasBase(src string, excludes []string) bool {
	for _, class := range []string{classOverlay, classCopy} {
		if m.newestBase(src, excludes, class, false) != nil {
			return true
		}
	}
	return false
}
