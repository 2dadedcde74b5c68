package dns

import (
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockopts lets a listener bind an env's gateway before, or while, the
// address is configured on the bridge (IP_FREEBIND), rebind right after a
// restart (SO_REUSEADDR), and, for UDP, share its port between the
// sockets of its workers (SO_REUSEPORT; the pidfile lock keeps other
// cilo servers away).
func sockopts(reuseport bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
			}
			if serr == nil && reuseport {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		return errors.Join(err, serr)
	}
}

// growBuffers gives a busy listener 4 MiB socket buffers, beyond
// net.core.rmem_max where the process may (root), so bursts are queued
// rather than dropped by the kernel.
func growBuffers(c *net.UDPConn) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], 4<<20) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], 4<<20)
			}
		}
	})
}
