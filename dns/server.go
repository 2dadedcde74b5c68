package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

const (
	// maxCachedReq bounds the requests whose packed answers are cached.
	maxCachedReq = 512
	// respCacheSize bounds the packed answers kept per zone; a full cache
	// is emptied, so random names cannot pin it.
	respCacheSize = 1 << 16
	// maxSlow bounds the queries being forwarded upstream at once;
	// beyond it queries are dropped, as an overloaded resolver does, and
	// clients retry.
	maxSlow = 1024
)

// Options configure a [Server].
type Options struct {
	// Suffix is the zone suffix (e.g. "test"), for the zone served until
	// the first [Server.SetZone].
	Suffix string
	// Addrs are the host listeners (ip:port, UDP and TCP on each); port 0
	// picks a free port, the same for UDP and TCP.
	Addrs []string
	// EnvPort is the port of the listener on each env's gateway (53);
	// 0 means no env listeners.
	EnvPort int
	// Forward answers the names that are not cilo's (nil: SERVFAIL).
	Forward Exchanger
	// Logf receives diagnostics (nil: discarded).
	Logf func(format string, args ...any)
}

// Server serves a [Zone] over UDP and TCP on the host listeners and on one
// listener per env gateway, adding and removing the env listeners as
// zones come and go. UDP answers that depend only on the request bytes
// and the zone are cached packed, per zone, so the steady state is one
// map lookup and two syscalls per query.
type Server struct {
	opts Options
	h    *Handler
	zone atomic.Pointer[Zone]
	slow chan struct{}
	logf func(string, ...any)

	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	host   []*listener
	envs   map[netip.Addr]*listener
	failed map[netip.Addr]bool // env listeners that could not bind yet
	wg     sync.WaitGroup
}

// NewServer returns a server that is not listening yet.
func NewServer(opts Options) *Server {
	s := &Server{opts: opts, slow: make(chan struct{}, maxSlow), envs: map[netip.Addr]*listener{}, failed: map[netip.Addr]bool{}}
	s.logf = opts.Logf
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	s.zone.Store(NewZone(opts.Suffix, nil, 0))
	s.h = NewHandler(s.zone.Load, opts.Forward)
	return s
}

// Handler is the server's query handler.
func (s *Server) Handler() *Handler { return s.h }

// Zone is the zone being served.
func (s *Server) Zone() *Zone { return s.zone.Load() }

// Start binds the host listeners and serves them until ctx is done or
// [Server.Close] is called. It fails if any host listener cannot bind.
func (s *Server) Start(ctx context.Context) error {
	s.ctx, s.cancel = context.WithCancel(ctx)
	for _, a := range s.opts.Addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			s.Close()
			return fmt.Errorf("dns listen address %q: %w", a, err)
		}
		l, err := s.listen(ap, runtime.GOMAXPROCS(0))
		if err != nil {
			s.Close()
			return err
		}
		s.mu.Lock()
		s.host = append(s.host, l)
		s.mu.Unlock()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-s.ctx.Done():
				s.Close()
				return
			case <-t.C:
				s.reconcile() // retry env listeners that failed to bind
			}
		}
	}()
	s.reconcile()
	return nil
}

// Addrs are the bound host listeners (with the port picked for port 0).
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	for _, l := range s.host {
		out = append(out, l.addr)
	}
	return out
}

// EnvAddrs are the env listeners currently bound.
func (s *Server) EnvAddrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	for _, l := range s.envs {
		out = append(out, l.addr)
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out
}

// SetZone makes z the zone every following query sees and adds or removes
// env listeners to match its envs. Safe for concurrent use.
func (s *Server) SetZone(z *Zone) {
	s.zone.Store(z)
	s.reconcile()
}

func (s *Server) reconcile() {
	if s.opts.EnvPort == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.ctx == nil {
		return
	}
	want := s.zone.Load().Views()
	for gw, l := range s.envs {
		if _, ok := want[gw]; !ok {
			l.close()
			delete(s.envs, gw)
		}
	}
	for gw := range s.failed {
		if _, ok := want[gw]; !ok {
			delete(s.failed, gw)
		}
	}
	for gw := range want {
		if _, ok := s.envs[gw]; ok || !gw.Is4() {
			continue
		}
		l, err := s.listen(netip.AddrPortFrom(gw, uint16(s.opts.EnvPort)), 1)
		if err != nil {
			if !s.failed[gw] {
				s.logf("dns: %v (retrying)", err)
			}
			s.failed[gw] = true
			continue
		}
		delete(s.failed, gw)
		s.envs[gw] = l
	}
}

// Close stops every listener and waits for their loops to end.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ls := slices.Clone(s.host)
	for _, l := range s.envs {
		ls = append(ls, l)
	}
	s.envs = map[netip.Addr]*listener{}
	s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.close())
	}
	return errors.Join(errs...)
}

// listener is one address served over UDP (our loop) and TCP (miekg's).
type listener struct {
	addr netip.AddrPort
	udp  *net.UDPConn
	tcp  *mdns.Server
	wg   sync.WaitGroup
}

func (l *listener) close() error {
	err := l.udp.Close()
	if l.tcp != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if terr := l.tcp.ShutdownContext(ctx); terr != nil && !errors.Is(terr, context.DeadlineExceeded) {
			err = errors.Join(err, terr)
		}
	}
	l.wg.Wait()
	return err
}

// freebind lets a listener bind an env's gateway before, or while, the
// address is configured on the bridge, and rebind right after a restart.
func freebind(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	return errors.Join(err, serr)
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

func (s *Server) listen(ap netip.AddrPort, workers int) (*listener, error) {
	lc := net.ListenConfig{Control: freebind}
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for try := 0; try < 10; try++ {
		pc, err = lc.ListenPacket(s.ctx, "udp4", ap.String())
		if err != nil {
			return nil, fmt.Errorf("listen on udp %s: %w", ap, err)
		}
		bound := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		ln, err = lc.Listen(s.ctx, "tcp4", netip.AddrPortFrom(ap.Addr(), bound.Port()).String())
		if err == nil {
			ap = netip.AddrPortFrom(ap.Addr(), bound.Port())
			break
		}
		pc.Close()
		if ap.Port() != 0 {
			return nil, fmt.Errorf("listen on tcp %s: %w", ap, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", ap, err)
	}
	l := &listener{addr: ap, udp: pc.(*net.UDPConn)}
	if workers > 1 {
		growBuffers(l.udp)
	}
	l.tcp = &mdns.Server{Listener: ln, Handler: s.h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
	l.wg.Add(1 + workers)
	go func() {
		defer l.wg.Done()
		if err := l.tcp.ActivateAndServe(); err != nil {
			s.logf("dns: tcp %s: %v", ap, err)
		}
	}()
	view := ap.Addr()
	for i := 0; i < workers; i++ {
		go func() {
			defer l.wg.Done()
			s.serveUDP(l.udp, view)
		}()
	}
	return l, nil
}

// serveUDP is the hot path: a cached answer is sent without allocating;
// other answers from the zone are computed inline (microseconds) and
// cached; only forwarded queries leave this goroutine.
func (s *Server) serveUDP(c *net.UDPConn, view netip.Addr) {
	buf := make([]byte, 65535)
	out := make([]byte, 0, 4096)
	var key [16 + maxCachedReq]byte
	v16 := view.As16()
	copy(key[:16], v16[:])
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		pkt := buf[:n]
		if n < 12 || pkt[2]&0x80 != 0 {
			continue // not even a header, or a response: never answer those
		}
		z := s.zone.Load()
		if n <= maxCachedReq {
			k := key[:16+n-2]
			copy(k[16:], pkt[2:])
			if resp := z.cache.get(k); resp != nil {
				out = append(out[:0], resp...)
				out[0], out[1] = pkt[0], pkt[1]
				c.WriteToUDPAddrPort(out, from)
				continue
			}
		}
		r := new(mdns.Msg)
		if err := r.Unpack(pkt); err != nil {
			c.WriteToUDPAddrPort(formErr(pkt), from)
			continue
		}
		m, fwd := s.h.local(z, view, r, true)
		if !fwd {
			if m == nil {
				continue
			}
			b, err := m.Pack()
			if err != nil {
				s.logf("dns: pack answer to %v: %v", r.Question, err)
				continue
			}
			if n <= maxCachedReq {
				z.cache.put(key[:16+n-2], b)
			}
			c.WriteToUDPAddrPort(b, from)
			continue
		}
		select {
		case s.slow <- struct{}{}:
		default:
			continue // too many upstream queries in flight: drop, the client retries
		}
		go func() {
			defer func() { <-s.slow }()
			s.forwardUDP(c, r, m, from)
		}()
	}
}

// forwardUDP answers a query that is not cilo's, on its own goroutine so
// a slow upstream never stalls the listener.
func (s *Server) forwardUDP(c *net.UDPConn, r, m *mdns.Msg, from netip.AddrPort) {
	m = s.h.forward(s.ctx, r, m, true)
	b, err := m.Pack()
	if err != nil {
		s.logf("dns: pack forwarded answer to %v: %v", r.Question, err)
		return
	}
	c.WriteToUDPAddrPort(b, from)
}

// formErr is the FORMERR answer to a request whose header is readable
// but whose body is not.
func formErr(req []byte) []byte {
	b := make([]byte, 12)
	copy(b, req[:4])
	b[2] = 0x80 | (req[2] & 0x79) // QR, keep opcode and RD
	b[3] = mdns.RcodeFormatError
	return b
}

// respCache holds the packed answers of one zone, keyed by the local
// address and the request without its ID.
type respCache struct {
	mu sync.RWMutex
	m  map[string][]byte
}

func newRespCache() *respCache { return &respCache{m: map[string][]byte{}} }

func (c *respCache) get(key []byte) []byte {
	c.mu.RLock()
	b := c.m[string(key)]
	c.mu.RUnlock()
	return b
}

func (c *respCache) put(key, resp []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= respCacheSize {
		clear(c.m)
	}
	c.m[string(key)] = resp
}
