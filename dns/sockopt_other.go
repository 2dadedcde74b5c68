//go:build !linux

package dns

import (
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockopts lets a listener rebind right after a restart (SO_REUSEADDR)
// and share its UDP port between its workers (SO_REUSEPORT). Without
// IP_FREEBIND an env's listener binds once its gateway exists (the server
// retries).
func sockopts(reuseport bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil && reuseport {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		return errors.Join(err, serr)
	}
}

// growBuffers asks for 4 MiB socket buffers, as far as the system allows.
func growBuffers(c *net.UDPConn) {
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
}
