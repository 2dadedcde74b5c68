package dns

import (
	"encoding/binary"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// watch reports changes to one file of a directory: inotify on the
// directory, since the file is replaced by rename (IN_MOVED_TO).
type watch struct {
	f    *os.File
	name string
	buf  []byte
}

func newWatch(dir, name string) (*watch, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Read parks in the poller
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_DELETE|unix.IN_MOVED_FROM); err != nil {
		f.Close()
		return nil, err
	}
	return &watch{f: f, name: name, buf: make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))}, nil
}

// Wait returns true when the file was touched, false after timeout
// without an event for it. Close makes a pending Wait return.
func (w *watch) Wait(timeout time.Duration) (bool, error) {
	w.f.SetReadDeadline(time.Now().Add(timeout))
	n, err := w.f.Read(w.buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return touches(w.buf[:n], w.name), nil
}

// Close releases the watch.
func (w *watch) Close() error { return w.f.Close() }

// touches reports whether any inotify event in b names the file name.
func touches(b []byte, name string) bool {
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
		if string(n) == name {
			return true
		}
		b = b[end:]
	}
	return false
}
