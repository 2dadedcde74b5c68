package dns

import (
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr: Go pads it to the alignment of Msghdr, as C
// does.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// batchConn moves UDP datagrams with recvmmsg and sendmmsg, under load
// many per syscall, without allocating: every header, buffer and address
// is preallocated, and a reply goes to the sender's raw sockaddr copied as
// it is. Not safe for concurrent use; one per worker socket.
type batchConn struct {
	c  *net.UDPConn
	rc syscall.RawConn

	in     [batch]mmsghdr
	inIov  [batch]unix.Iovec
	inName [batch]unix.RawSockaddrInet6
	inBuf  [batch][]byte

	out     [batch]mmsghdr
	outIov  [batch]unix.Iovec
	outName [batch]unix.RawSockaddrInet6
	nout    int
}

func newBatchConn(c *net.UDPConn) (*batchConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &batchConn{c: c, rc: rc}
	for i := range b.in {
		b.inBuf[i] = make([]byte, 4096)
		b.inIov[i].Base = &b.inBuf[i][0]
		b.inIov[i].SetLen(len(b.inBuf[i]))
		h := &b.in[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&b.inName[i]))
		h.Iov = &b.inIov[i]
		h.SetIovlen(1)
		o := &b.out[i].hdr
		o.Name = (*byte)(unsafe.Pointer(&b.outName[i]))
		o.Iov = &b.outIov[i]
		o.SetIovlen(1)
	}
	return b, nil
}

// Read waits for datagrams and returns how many arrived (1 to batch).
func (b *batchConn) Read() (int, error) {
	for i := range b.in {
		b.in[i].hdr.Namelen = unix.SizeofSockaddrInet6
		b.in[i].hdr.Flags = 0
	}
	var (
		n     int
		errno syscall.Errno
	)
	err := b.rc.Read(func(fd uintptr) bool {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.in[0])), batch, unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false // wait until readable
		}
		n, errno = int(r), e
		return true
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return n, nil
}

// Packet is datagram i of the last Read; a datagram larger than the
// buffer comes back cut, which makes it malformed, as it should be.
func (b *batchConn) Packet(i int) []byte { return b.inBuf[i][:b.in[i].n] }

// Addr is the sender of datagram i.
func (b *batchConn) Addr(i int) netip.AddrPort {
	sa := &b.inName[i]
	port := uint16(sa.Port>>8 | sa.Port<<8) // network byte order
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
}

// Queue queues resp as the reply to datagram i; resp must not change
// until Flush.
func (b *batchConn) Queue(i int, resp []byte) {
	k := b.nout
	b.outName[k] = b.inName[i]
	b.out[k].hdr.Namelen = b.in[i].hdr.Namelen
	b.outIov[k].Base = &resp[0]
	b.outIov[k].SetLen(len(resp))
	b.nout++
}

// Flush sends the queued replies. A reply the kernel refuses is dropped,
// as UDP would drop it on the way.
func (b *batchConn) Flush() {
	for sent := 0; sent < b.nout; {
		var (
			n     int
			errno syscall.Errno
		)
		err := b.rc.Write(func(fd uintptr) bool {
			r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.out[sent])), uintptr(b.nout-sent), unix.MSG_DONTWAIT, 0, 0)
			if e == unix.EAGAIN || e == unix.EINTR {
				return false // wait until writable
			}
			n, errno = int(r), e
			return true
		})
		switch {
		case err != nil:
			sent = b.nout // the socket is closed
		case errno != 0 || n <= 0:
			sent++
		default:
			sent += n
		}
	}
	for i := range b.nout {
		b.outIov[i].Base = nil // let the reply buffers go
	}
	b.nout = 0
}
