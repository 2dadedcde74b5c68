package dns

import (
	"encoding/binary"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// watch reports changes to the files of a directory that match a
// predicate: inotify on the directory, since files are replaced by rename
// (IN_MOVED_TO).
type watch struct {
	f     *os.File
	match func(name string) bool
	buf   []byte
}

func newWatch(dir string, match func(name string) bool) (*watch, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Read parks in the poller
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_DELETE|unix.IN_MOVED_FROM); err != nil {
		f.Close()
		return nil, err
	}
	return &watch{f: f, match: match, buf: make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))}, nil
}

// Wait returns true when a matching file was touched, false after timeout
// without an event for one. Close makes a pending Wait return.
func (w *watch) Wait(timeout time.Duration) (bool, error) {
	w.f.SetReadDeadline(time.Now().Add(timeout))
	n, err := w.f.Read(w.buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return touches(w.buf[:n], w.match), nil
}

// Close releases the watch.
func (w *watch) Close() error { return w.f.Close() }

// touches reports whether any inotify event in b names a matching file.
func touches(b []byte, match func(string) bool) bool {
	for len(b) >= unix.SizeofInotifyEvent {
		// struct inotify_event: wd, mask, cookie, len, then the name.
		end := unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(b[12:16]))
		if end > len(b) {
			return false
		}
		n := b[unix.SizeofInotifyEvent:end]
		for i, c := range n {
			if c == 0 {
				n = n[:i]
				break
			}
		}
		if match(string(n)) {
			return true
		}
		b = b[end:]
	}
	return false
}
