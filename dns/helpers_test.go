package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/cilo-dev/cilo/sandbox/state"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// testEnv is a running env of project with index i: subnet 10.250.i.0/24.
func testEnv(project, name string, i int, svcs ...state.Service) *state.Env {
	return &state.Env{
		Project: project, Name: name, Status: state.StatusRunning, Index: i,
		Gateway:   netip.AddrFrom4([4]byte{10, 250, byte(i), 1}),
		IP:        netip.AddrFrom4([4]byte{10, 250, byte(i), 2}),
		Services:  svcs,
		CreatedAt: epoch.Add(time.Duration(i) * time.Minute),
	}
}

func svc(name string, addrs ...string) state.Service {
	s := state.Service{Name: name}
	for _, a := range addrs {
		s.Addrs = append(s.Addrs, netip.MustParseAddr(a))
	}
	return s
}

// recorder is a ResponseWriter that keeps the answer (CoreDNS's
// dnstest.Recorder, without the dependency).
type recorder struct {
	local, remote net.Addr
	msg           *mdns.Msg
}

func (r *recorder) LocalAddr() net.Addr         { return r.local }
func (r *recorder) RemoteAddr() net.Addr        { return r.remote }
func (r *recorder) WriteMsg(m *mdns.Msg) error  { r.msg = m; return nil }
func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *recorder) Close() error                { return nil }
func (r *recorder) TsigStatus() error           { return nil }
func (r *recorder) TsigTimersOnly(bool)         {}
func (r *recorder) Hijack()                     {}

// ask sends m to h as if it arrived on local (the host listener when
// invalid) over UDP or TCP, and returns the answer.
func ask(h *Handler, local netip.Addr, m *mdns.Msg, udp bool) *mdns.Msg {
	if !local.IsValid() {
		local = netip.MustParseAddr("127.0.0.1")
	}
	rec := &recorder{}
	if udp {
		rec.local = net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 53))
		rec.remote = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	} else {
		rec.local = net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 53))
		rec.remote = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	}
	h.ServeDNS(rec, m)
	return rec.msg
}

func question(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	return m
}

// addrsOf returns the A records of m, sorted.
func addrsOf(m *mdns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
		}
	}
	slices.Sort(out)
	return out
}

// fakeExchanger records what the handler forwards.
type fakeExchanger struct {
	mu    sync.Mutex
	names []string
	fail  bool
}

func (f *fakeExchanger) Exchange(ctx context.Context, r *mdns.Msg) (*mdns.Msg, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.names = append(f.names, r.Question[0].Name)
	if f.fail {
		return nil, fmt.Errorf("upstream down")
	}
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Answer = append(m.Answer, &mdns.A{
		Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60},
		A:   net.IPv4(192, 0, 2, 1),
	})
	return m, nil
}

func (f *fakeExchanger) forwarded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.names)
}

// fakeUpstream is a resolver on a loopback port the test owns: it answers
// every A question with 192.0.2.<n> (n counts queries), "big." names with
// 100 records (truncated over UDP), and never answers "drop." names.
type fakeUpstream struct {
	addr    string
	queries atomic.Int64
}

func startFakeUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		n := u.queries.Add(1)
		q := r.Question[0]
		if mdns.IsSubDomain("drop.", q.Name) {
			return
		}
		m := new(mdns.Msg)
		m.SetReply(r)
		count := 1
		if mdns.IsSubDomain("big.", q.Name) {
			count = 100
		}
		if mdns.IsSubDomain("missing.", q.Name) {
			m.Rcode = mdns.RcodeNameError
			count = 0
		}
		for i := 0; i < count && q.Qtype == mdns.TypeA; i++ {
			m.Answer = append(m.Answer, &mdns.A{
				Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60},
				A:   net.IPv4(192, 0, 2, byte(int(n)+i)),
			})
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncate(clientSize(r))
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	us := &mdns.Server{PacketConn: pc, Handler: h}
	ts := &mdns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() {
		us.Shutdown()
		ts.Shutdown()
	})
	return u
}

// deadUpstream is a loopback address where nothing listens: queries to it
// fail at once (port unreachable).
func deadUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// startServer runs a server on a free loopback port with zone z.
func startServer(t *testing.T, z *Zone, fwd Exchanger) (*Server, string) {
	t.Helper()
	s := NewServer(Options{Suffix: "test", Addrs: []string{"127.0.0.1:0"}, Forward: fwd, Logf: t.Logf})
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if z != nil {
		s.SetZone(z)
	}
	return s, s.Addrs()[0].String()
}

func exchange(t *testing.T, network, addr string, m *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: network, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s to %s: %v", network, m.Question[0].Name, addr, err)
	}
	return r
}
