package dns

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/cilo-dev/cilo/sandbox/state"
)

func TestForwarding(t *testing.T) {
	up := startFakeUpstream(t)
	fwd := NewForwarder(func() []string { return []string{up.addr} }, time.Second)
	_, addr := startServer(t, testZone(), fwd)

	t.Run("forwarded_and_cached", func(t *testing.T) {
		before := up.queries.Load()
		r1 := exchange(t, "udp", addr, question("www.example.org", mdns.TypeA))
		r2 := exchange(t, "udp", addr, question("WWW.example.org", mdns.TypeA))
		if got := up.queries.Load() - before; got != 1 {
			t.Fatalf("upstream asked %d times, want 1 (cache)", got)
		}
		if len(r1.Answer) != 1 || !slices.Equal(addrsOf(r1), addrsOf(r2)) {
			t.Fatalf("answers %v and %v", r1.Answer, r2.Answer)
		}
		if r2.Question[0].Name != "WWW.example.org." || r2.Answer[0].Header().Ttl > 60 {
			t.Fatalf("cached answer %v", r2)
		}
	})
	t.Run("nxdomain_forwarded", func(t *testing.T) {
		if r := exchange(t, "udp", addr, question("x.missing", mdns.TypeA)); r.Rcode != mdns.RcodeNameError {
			t.Fatalf("rcode %s", mdns.RcodeToString[r.Rcode])
		}
	})
	t.Run("truncated_upstream_retried_over_tcp", func(t *testing.T) {
		r := exchange(t, "tcp", addr, question("a.big", mdns.TypeA))
		if len(r.Answer) != 100 {
			t.Fatalf("%d records over TCP, want 100", len(r.Answer))
		}
		r = exchange(t, "udp", addr, question("b.big", mdns.TypeA))
		if !r.Truncated {
			t.Fatalf("100 records over UDP to a non-EDNS client: not truncated")
		}
	})
	t.Run("suffix_never_forwarded", func(t *testing.T) {
		before := up.queries.Load()
		for _, n := range []string{"nope.dev.test", "db.dev.test", "test", "x.y.z.test"} {
			exchange(t, "udp", addr, question(n, mdns.TypeA))
		}
		if got := up.queries.Load() - before; got != 0 {
			t.Fatalf("upstream asked %d times for names under the suffix", got)
		}
	})
	t.Run("servfail_when_upstream_silent", func(t *testing.T) {
		r := exchange(t, "udp", addr, question("x.drop", mdns.TypeA))
		if r.Rcode != mdns.RcodeServerFailure {
			t.Fatalf("rcode %s", mdns.RcodeToString[r.Rcode])
		}
	})
	t.Run("servfail_when_upstream_down", func(t *testing.T) {
		fwd := NewForwarder(func() []string { return []string{deadUpstream(t)} }, time.Second)
		_, addr := startServer(t, testZone(), fwd)
		if r := exchange(t, "udp", addr, question("example.org", mdns.TypeA)); r.Rcode != mdns.RcodeServerFailure {
			t.Fatalf("rcode %s", mdns.RcodeToString[r.Rcode])
		}
	})
	t.Run("second_upstream_after_failure", func(t *testing.T) {
		fwd := NewForwarder(func() []string { return []string{deadUpstream(t), up.addr} }, time.Second)
		_, addr := startServer(t, testZone(), fwd)
		if r := exchange(t, "udp", addr, question("second.example.org", mdns.TypeA)); len(r.Answer) != 1 {
			t.Fatalf("answer %v", r)
		}
	})
}

func TestServerUDPAndTCP(t *testing.T) {
	_, addr := startServer(t, testZone(), nil)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			for i := 0; i < 3; i++ { // the second and third come from the packed cache
				q := question("db.dev.shop.test", mdns.TypeA)
				r := exchange(t, network, addr, q)
				if r.Id != q.Id || !slices.Equal(addrsOf(r), []string{"10.250.1.11"}) || !r.Authoritative {
					t.Fatalf("try %d: %v", i, r)
				}
			}
			// 0x20 case mixing is echoed exactly, cached or not.
			for i := 0; i < 2; i++ {
				q := question("dB.DeV.sHoP.TeSt", mdns.TypeA)
				if r := exchange(t, network, addr, q); r.Question[0].Name != "dB.DeV.sHoP.TeSt." || r.Answer[0].Header().Name != "dB.DeV.sHoP.TeSt." {
					t.Fatalf("question %v answer %v", r.Question, r.Answer)
				}
			}
		})
	}
	t.Run("ipv6_host_listener", func(t *testing.T) {
		if !hasLoopback6() {
			t.Skip("this machine has no ::1 (IPv6 disabled)")
		}
		s := NewServer(Options{Suffix: "test", Addrs: []string{"[::1]:0"}})
		if err := s.Start(context.Background()); err != nil {
			t.Fatalf("listen on ::1 (loopback): %v", err)
		}
		defer s.Close()
		s.SetZone(testZone())
		for _, network := range []string{"udp", "tcp"} {
			if r := exchange(t, network, s.Addrs()[0].String(), question("db.dev.test", mdns.TypeA)); !slices.Equal(addrsOf(r), []string{"10.250.1.11"}) {
				t.Fatalf("%s over IPv6: %v", network, r)
			}
		}
	})
	t.Run("tcp_fallback_on_truncation", func(t *testing.T) {
		// miekg's client does not retry by itself: do what stub resolvers do.
		r := exchange(t, "udp", addr, question("many.dev.shop.test", mdns.TypeA))
		if !r.Truncated {
			t.Fatal("not truncated over UDP")
		}
		if r := exchange(t, "tcp", addr, question("many.dev.shop.test", mdns.TypeA)); len(r.Answer) != 100 {
			t.Fatalf("%d records over TCP", len(r.Answer))
		}
		res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}
		got, err := res.LookupHost(context.Background(), "many.dev.shop.test")
		if err != nil || len(got) != 100 {
			t.Fatalf("Go resolver: %d addresses, %v", len(got), err)
		}
	})
}

// TestMalformedPackets sends 10,000 random and mutated packets and checks
// that the server still answers.
func TestMalformedPackets(t *testing.T) {
	_, addr := startServer(t, testZone(), &fakeExchanger{})
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	valid, _ := question("db.dev.test", mdns.TypeA).Pack()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10000; i++ {
		var pkt []byte
		switch i % 3 {
		case 0: // random bytes
			pkt = make([]byte, rng.IntN(600))
			for j := range pkt {
				pkt[j] = byte(rng.Uint32())
			}
		case 1: // a valid query with flipped bytes
			pkt = slices.Clone(valid)
			for n := rng.IntN(4) + 1; n > 0; n-- {
				pkt[rng.IntN(len(pkt))] = byte(rng.Uint32())
			}
		case 2: // truncated
			pkt = valid[:rng.IntN(len(valid))]
		}
		c.Write(pkt)
		if i%500 == 0 {
			time.Sleep(time.Millisecond) // let the socket buffer drain
		}
	}
	// The flood may still fill the socket buffer, where the kernel drops
	// what does not fit: retry as stub resolvers do.
	for _, network := range []string{"udp", "tcp"} {
		c := &mdns.Client{Net: network, Timeout: time.Second}
		var (
			r   *mdns.Msg
			err error
		)
		for try := 0; try < 3; try++ {
			if r, _, err = c.Exchange(question("db.dev.test", mdns.TypeA), addr); err == nil {
				break
			}
		}
		if err != nil || !slices.Equal(addrsOf(r), []string{"10.250.1.11"}) {
			t.Fatalf("%s after garbage: %v %v", network, r, err)
		}
	}
}

// FuzzHandler feeds arbitrary packets to the handler: it must not panic,
// and whatever it answers must pack.
func FuzzHandler(f *testing.F) {
	for _, q := range []*mdns.Msg{
		question("db.dev.test", mdns.TypeA), question("x.shop.dev.test", mdns.TypeAAAA),
		question("db", mdns.TypeA), question("test", mdns.TypeSOA), question("many.dev.shop.test", mdns.TypeANY),
	} {
		b, _ := q.Pack()
		f.Add(b, true)
		q.SetEdns0(4096, true)
		b, _ = q.Pack()
		f.Add(b, false)
	}
	z := testZone()
	h := NewHandler(func() *Zone { return z }, &fakeExchanger{})
	f.Fuzz(func(t *testing.T, pkt []byte, udp bool) {
		r := new(mdns.Msg)
		if err := r.Unpack(pkt); err != nil {
			if len(pkt) >= 12 {
				formErr(pkt)
			}
			return
		}
		for _, view := range []netip.Addr{host, shopView} {
			m := h.respond(context.Background(), z, view, r, udp)
			if m == nil {
				continue
			}
			b, err := m.Pack()
			if err != nil {
				t.Fatalf("answer does not pack: %v\n%v", err, m)
			}
			if udp && len(b) > udpSize {
				t.Fatalf("UDP answer of %d bytes", len(b))
			}
		}
	})
}

// TestLiveUpdate creates and destroys envs in the state while
// querying in a loop, and checks that each change is seen within 100 ms
// of the state write returning, with no restart or signal.
func TestLiveUpdate(t *testing.T) {
	dir := t.TempDir()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, addr := startServer(t, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewStateSource(dir, "test", t.Logf).Run(ctx, s.SetZone) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("state source: %v", err)
		}
	})

	c := &mdns.Client{Net: "udp", Timeout: 50 * time.Millisecond}
	// waitFor queries name in a loop until its rcode is want, and returns
	// how long that took.
	waitFor := func(name string, want int) time.Duration {
		start := time.Now()
		for time.Since(start) < 2*time.Second {
			r, _, err := c.Exchange(question(name, mdns.TypeA), addr)
			if err == nil && r.Rcode == want {
				return time.Since(start)
			}
		}
		t.Fatalf("%s not %s after 2s", name, mdns.RcodeToString[want])
		return 0
	}
	var worst time.Duration
	for i := 1; i <= 10; i++ {
		e := testEnv("live", "e"+string(rune('a'+i)), i, svc("db", netip.AddrFrom4([4]byte{10, 250, byte(i), 11}).String()))
		name := "db." + e.Name + ".test"
		waitFor(name, mdns.RcodeNameError)
		putEnv(t, store, e)
		worst = max(worst, waitFor(name, mdns.RcodeSuccess))
		if _, err := store.Update(ctx, e.Key(), func(e *state.Env) error { e.Status = state.StatusDestroying; return nil }); err != nil {
			t.Fatal(err)
		}
		worst = max(worst, waitFor(name, mdns.RcodeNameError))
		if err := store.Delete(ctx, e.Key()); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("worst latency from state write to answer: %v", worst)
	if worst > 100*time.Millisecond {
		t.Fatalf("a change took %v to answer, want under 100 ms", worst)
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := dir + "/" + name
		if err := writeFileAtomic(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	resolved := write("resolved.conf", "nameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver 192.0.2.53\n")
	tests := []struct {
		name, conf string
		want       []string
	}{
		{"plain", "search lan\nnameserver 192.0.2.1\nnameserver 192.0.2.2 # x\noptions ndots:2\n", []string{"192.0.2.1:53", "192.0.2.2:53"}},
		{"resolved_stub", "nameserver 127.0.0.53\noptions edns0\n", []string{"192.0.2.53:53", "[2001:db8::53]:53"}},
		{"own_stub_skipped", "nameserver 127.0.0.153\nnameserver 192.0.2.1\n", []string{"192.0.2.1:53"}},
		{"malformed_lines", "nameserver\nnameserver nope\nnameserver 192.0.2.9\n", []string{"192.0.2.9:53"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := write(tt.name+".conf", tt.conf)
			u := NewUpstreams(p, resolved, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.153:53")})
			if got := u.List(); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// putEnv records e as it is, index included.
func putEnv(t *testing.T, store *state.Store, e *state.Env) {
	t.Helper()
	_, err := store.Insert(context.Background(), e.Key(), func(func(int) bool) (*state.Env, error) { return e, nil })
	if err != nil {
		t.Fatal(err)
	}
}

// TestBrokenStateKeepsZone checks that a state record that does not parse
// leaves the last good zone in service, and that the next good write is
// picked up.
func TestBrokenStateKeepsZone(t *testing.T) {
	dir := t.TempDir()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := testEnv("shop", "dev", 1, svc("db", "10.250.1.11"))
	putEnv(t, store, e)
	s, addr := startServer(t, nil, nil)
	done := make(chan error, 1)
	go func() { done <- NewStateSource(dir, "test", t.Logf).Run(ctx, s.SetZone) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("state source: %v", err)
		}
	})
	answers := func(name string) bool {
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if r := exchange(t, "udp", addr, question(name, mdns.TypeA)); r.Rcode == mdns.RcodeSuccess {
				return true
			}
		}
		return false
	}
	if !answers("db.dev.test") {
		t.Fatal("db.dev.test never answered")
	}
	broken := filepath.Join(store.EnvsDir(), "shop.dev.json")
	if err := writeFileAtomic(broken, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if r := exchange(t, "udp", addr, question("db.dev.test", mdns.TypeA)); r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("a broken state record took the zone down: %v", r)
	}
	e2 := testEnv("shop", "qa", 2, svc("db", "10.250.2.11"))
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	putEnv(t, store, e2)
	if !answers("db.qa.test") {
		t.Fatal("the next good state was not picked up")
	}
}

// TestUpstreamsFollowChanges checks that a changed resolv.conf (DHCP, VPN)
// is picked up without a restart.
func TestUpstreamsFollowChanges(t *testing.T) {
	p := t.TempDir() + "/resolv.conf"
	if err := writeFileAtomic(p, []byte("nameserver 192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u := NewUpstreams(p, "", nil)
	if got := u.List(); !slices.Equal(got, []string{"192.0.2.1:53"}) {
		t.Fatalf("got %v", got)
	}
	if err := writeFileAtomic(p, []byte("nameserver 192.0.2.7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	u.mu.Lock()
	u.checked = time.Time{} // as if a second had passed
	u.mu.Unlock()
	if got := u.List(); !slices.Equal(got, []string{"192.0.2.7:53"}) {
		t.Fatalf("after the change: %v", got)
	}
}

func hasLoopback6() bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(net.IPv6loopback) {
			return true
		}
	}
	return false
}

// TestQuickStartStop adds and removes listeners as fast as possible: a
// listener closed right after it was opened must not keep serving (and
// keep Close waiting) forever.
func TestQuickStartStop(t *testing.T) {
	port := netip.MustParseAddrPort(freePort(t)).Port()
	withEnv := NewZone("test", []*state.Env{func() *state.Env {
		e := testEnv("shop", "dev", 1, svc("db", "10.250.1.11"))
		e.Gateway = netip.MustParseAddr("127.0.0.1") // loopback stand-in on the test's own port
		return e
	}()}, 1)
	empty := NewZone("test", nil, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 50; i++ {
			s := NewServer(Options{Suffix: "test", Addrs: []string{"127.0.0.1:0"}, EnvPort: int(port)})
			if err := s.Start(context.Background()); err != nil {
				t.Error(err)
				return
			}
			for j := 0; j < 5; j++ {
				s.SetZone(withEnv)
				s.SetZone(empty)
			}
			s.Close()
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("starting and stopping listeners hangs")
	}
}
