//go:build !linux

package dns

import (
	"net"
	"net/netip"
)

// batchConn moves one datagram at a time where there is no recvmmsg.
type batchConn struct {
	c    *net.UDPConn
	buf  []byte
	n    int
	from netip.AddrPort
}

func newBatchConn(c *net.UDPConn) (*batchConn, error) {
	return &batchConn{c: c, buf: make([]byte, 4096)}, nil
}

// Read waits for a datagram.
func (b *batchConn) Read() (int, error) {
	n, from, err := b.c.ReadFromUDPAddrPort(b.buf)
	if err != nil {
		return 0, err
	}
	b.n, b.from = n, from
	return 1, nil
}

// Packet is the datagram of the last Read.
func (b *batchConn) Packet(int) []byte { return b.buf[:b.n] }

// Addr is its sender.
func (b *batchConn) Addr(int) netip.AddrPort { return b.from }

// Queue sends resp at once.
func (b *batchConn) Queue(_ int, resp []byte) { b.c.WriteToUDPAddrPort(resp, b.from) }

// Flush has nothing left to send.
func (b *batchConn) Flush() {}
