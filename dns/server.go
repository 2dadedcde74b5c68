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
	"time"

	mdns "github.com/miekg/dns"
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
// map lookup per query and, under load, one recvmmsg and one sendmmsg per
// batch of queries. Its methods are safe for concurrent use.
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
	s.h.base = s.ctx // before any listener runs the handler
	for _, a := range s.opts.Addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			s.Close()
			return fmt.Errorf("dns listen address %q: %w", a, err)
		}
		// Two sockets per CPU: the kernel spreads clients over sockets by
		// a hash of their address, and with more buckets than CPUs even
		// a few clients keep every CPU busy.
		l, err := s.listen(ap, 2*runtime.GOMAXPROCS(0))
		if err != nil {
			s.Close()
			return err
		}
		s.mu.Lock()
		s.host = append(s.host, l)
		s.mu.Unlock()
	}
	go func() {
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

// listener is one address served over UDP (our loops, one socket per
// worker sharing the port through SO_REUSEPORT, so the kernel spreads
// clients over cores) and TCP (miekg's server).
type listener struct {
	addr netip.AddrPort
	udp  []*net.UDPConn
	ln   net.Listener
	tcp  *mdns.Server
	wg   sync.WaitGroup
}

func (l *listener) close() error {
	var errs []error
	for _, c := range l.udp {
		errs = append(errs, c.Close())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := l.tcp.ShutdownContext(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		errs = append(errs, err)
	}
	l.ln.Close() // in any case: Accept fails and the TCP loop ends
	l.wg.Wait()
	return errors.Join(errs...)
}

// bind opens the UDP sockets and the TCP listener of ap; port 0 picks a
// port free for both.
func (s *Server) bind(ap netip.AddrPort, workers int) ([]*net.UDPConn, net.Listener, netip.AddrPort, error) {
	ulc := net.ListenConfig{Control: sockopts(workers > 1)}
	tlc := net.ListenConfig{Control: sockopts(false)}
	udp, tcp := "udp4", "tcp4"
	if !ap.Addr().Unmap().Is4() {
		udp, tcp = "udp6", "tcp6" // e.g. CILO_DNS_ADDR=[::1]:5354
	}
	var lastErr error
	for try := 0; try < 10; try++ {
		pc, err := ulc.ListenPacket(s.ctx, udp, ap.String())
		if err != nil {
			return nil, nil, ap, fmt.Errorf("listen on udp %s: %w", ap, err)
		}
		bound := netip.AddrPortFrom(ap.Addr(), pc.LocalAddr().(*net.UDPAddr).AddrPort().Port())
		ln, err := tlc.Listen(s.ctx, tcp, bound.String())
		if err != nil {
			pc.Close()
			lastErr = fmt.Errorf("listen on tcp %s: %w", bound, err)
			if ap.Port() != 0 {
				return nil, nil, ap, lastErr
			}
			continue
		}
		conns := []*net.UDPConn{pc.(*net.UDPConn)}
		for len(conns) < workers {
			pc, err := ulc.ListenPacket(s.ctx, udp, bound.String())
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				ln.Close()
				return nil, nil, ap, fmt.Errorf("listen on udp %s: %w", bound, err)
			}
			conns = append(conns, pc.(*net.UDPConn))
		}
		return conns, ln, bound, nil
	}
	return nil, nil, ap, lastErr
}

func (s *Server) listen(ap netip.AddrPort, workers int) (*listener, error) {
	conns, ln, bound, err := s.bind(ap, workers)
	if err != nil {
		return nil, err
	}
	l := &listener{addr: bound, udp: conns, ln: ln}
	started := make(chan struct{})
	l.tcp = &mdns.Server{Listener: ln, Handler: s.h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		NotifyStartedFunc: func() { close(started) }}
	exited := make(chan struct{})
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(exited)
		if err := l.tcp.ActivateAndServe(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.logf("dns: tcp %s: %v", bound, err)
		}
	}()
	// miekg's Shutdown fails on a server that has not started yet, which
	// would leave it serving a listener that close already gave up on.
	select {
	case <-started:
	case <-exited:
	}
	for _, c := range conns {
		if workers > 1 {
			growBuffers(c)
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			s.serveUDP(c, bound.Addr())
		}()
	}
	return l, nil
}

// batch is how many datagrams one recvmmsg/sendmmsg moves.
const batch = 32

// serveUDP is the hot path. Datagrams come and go in batches
// (recvmmsg/sendmmsg: under load one syscall moves many); a cached answer
// costs a map lookup and a copy; other answers from the zone are computed
// inline (microseconds) and cached; only forwarded queries leave this
// goroutine.
func (s *Server) serveUDP(c *net.UDPConn, view netip.Addr) {
	bc, err := newBatchConn(c)
	if err != nil {
		s.logf("dns: udp %s: %v", c.LocalAddr(), err)
		return
	}
	var outBuf [batch][]byte
	for i := range outBuf {
		outBuf[i] = make([]byte, 0, 4096)
	}
	var key [16 + maxCachedReq]byte
	v16 := view.As16()
	copy(key[:16], v16[:])
	for {
		n, err := bc.Read()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		z := s.zone.Load()
		for i := range n {
			if b := s.answerPacket(bc, i, z, view, &key, outBuf[i][:0]); b != nil {
				bc.Queue(i, b)
			}
		}
		bc.Flush()
	}
}

// answerPacket returns the answer to datagram i of bc, appended to buf,
// or nil when there is none to send now (dropped, or being forwarded).
func (s *Server) answerPacket(bc *batchConn, i int, z *Zone, view netip.Addr, key *[16 + maxCachedReq]byte, buf []byte) []byte {
	pkt := bc.Packet(i)
	n := len(pkt)
	if n < 12 || pkt[2]&0x80 != 0 {
		return nil // not even a header, or a response: never answer those
	}
	var k []byte
	if n <= maxCachedReq {
		k = key[:16+n-2]
		copy(k[16:], pkt[2:])
		if resp := z.cache.get(k); resp != nil {
			buf = append(buf, resp...)
			buf[0], buf[1] = pkt[0], pkt[1]
			return buf
		}
	}
	r := new(mdns.Msg)
	if err := r.Unpack(pkt); err != nil {
		return append(buf, formErr(pkt)...)
	}
	m, fwd := s.h.local(z, view, r, true)
	if fwd {
		select {
		case s.slow <- struct{}{}:
		default:
			return nil // too many upstream queries in flight: drop, the client retries
		}
		c, from := bc.c, bc.Addr(i)
		go func() {
			defer func() { <-s.slow }()
			s.forwardUDP(c, r, m, from)
		}()
		return nil
	}
	if m == nil {
		return nil
	}
	b, err := m.PackBuffer(buf)
	if err != nil {
		s.logf("dns: pack answer to %v: %v", r.Question, err)
		return nil
	}
	if k != nil {
		z.cache.put(k, slices.Clone(b))
	}
	return b
}

// forwardUDP answers a query that is not cilo's, on its own goroutine so
// a slow upstream never stalls the listener.
func (s *Server) forwardUDP(c *net.UDPConn, r, m *mdns.Msg, to netip.AddrPort) {
	m = s.h.forward(s.ctx, r, m, true)
	b, err := m.Pack()
	if err != nil {
		s.logf("dns: pack forwarded answer to %v: %v", r.Question, err)
		return
	}
	c.WriteToUDPAddrPort(b, to)
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
