package dns

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// envNet is a stand-in for a cilo env's network, made by the test: a
// bridge on the host holding the gateway (.1) and a named netns at .2
// joined to it by a veth pair. Everything is named with a random suffix
// and removed by t.Cleanup, even when the test fails.
type envNet struct {
	ns     string
	gw, ip netip.Addr
}

func newEnvNet(t *testing.T) *envNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) to create a netns and a bridge")
	}
	b := make([]byte, 4)
	rand.Read(b)
	id := hex.EncodeToString(b)
	subnet, err := freeSubnet(b[0])
	if err != nil {
		t.Fatal(err)
	}
	gw := subnet.Addr().Next()
	e := &envNet{ns: "cilo-dnstest-" + id, gw: gw, ip: gw.Next()}
	br, vh, vp := "cdb"+id, "cdh"+id, "cdp"+id

	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br}}
	if err := netlink.LinkAdd(bridge); err != nil {
		t.Fatalf("add bridge %s: %v", br, err)
	}
	t.Cleanup(func() { netlink.LinkDel(bridge) })
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrAdd(bridge, addr); err != nil {
		t.Fatalf("add %s to %s: %v", gw, br, err)
	}
	if err := netlink.LinkSetUp(bridge); err != nil {
		t.Fatal(err)
	}

	ns, err := newNamedNetns(e.ns)
	if err != nil {
		t.Fatalf("create netns %s: %v", e.ns, err)
	}
	t.Cleanup(func() {
		ns.Close()
		netns.DeleteNamed(e.ns)
	})
	la := netlink.NewLinkAttrs()
	la.Name, la.MasterIndex = vh, bridge.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: la, PeerName: vp, PeerNamespace: netlink.NsFd(ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", vh, err)
	}
	t.Cleanup(func() { netlink.LinkDel(veth) })
	if err := netlink.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	peer, err := h.LinkByName(vp)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: e.ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{peer, lo} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// newNamedNetns creates /run/netns/name from a locked thread that goes
// back to its own netns before it is unlocked.
func newNamedNetns(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		panic(fmt.Sprintf("cannot return to the original netns: %v", serr)) // the thread is unusable
	}
	return ns, err
}

// freeSubnet picks a 10.250.x.0/24 that no host address or route touches.
func freeSubnet(seed byte) (netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, err
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, err
	}
	for i := 0; i < 254; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(1 + (int(seed)+i)%254), 0}), 24)
		used := false
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && p.Contains(ip) {
				used = true
			}
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			ip, _ := netip.AddrFromSlice(r.Dst.IP.To4())
			ones, _ := r.Dst.Mask.Size()
			if ones > 0 && netip.PrefixFrom(ip, ones).Overlaps(p) { // the default route is no conflict
				used = true
			}
		}
		if !used {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /24 in 10.250.0.0/16")
}

// inEnv runs argv inside e's netns with resolvConf bind-mounted over
// /etc/resolv.conf in a private mount namespace, as sandbox does for
// processes run in an env; the host's file is never touched.
func (e *envNet) inEnv(t *testing.T, resolvConf []byte, env []string, argv ...string) string {
	t.Helper()
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, resolvConf, 0o644); err != nil {
		t.Fatal(err)
	}
	script := `mount --bind "$1" /etc/resolv.conf && ns="$2" && shift 2 && exec nsenter --net="$ns" -- "$@"`
	args := append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", rc, "/run/netns/" + e.ns}, argv...)
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v in env: %v\n%s", argv, err, out)
	}
	return string(out)
}

// TestFromInsideEnv resolves names from inside a real netns through the
// server's listener on the env gateway, with glibc (getent) and with Go's
// resolver, using the env's private resolv.conf from [ResolvConf].
func TestFromInsideEnv(t *testing.T) {
	e := newEnvNet(t)
	up := startFakeUpstream(t)
	sub := e.gw.As4()
	addr := func(last byte) string { return netip.AddrFrom4([4]byte{sub[0], sub[1], sub[2], last}).String() }
	many := svc("many")
	for i := 0; i < 60; i++ {
		many.Addrs = append(many.Addrs, netip.MustParseAddr(addr(byte(100+i))))
	}
	var manyAddrs []string
	for _, a := range many.Addrs {
		manyAddrs = append(manyAddrs, a.String())
	}
	web := svc("web", addr(10))
	shop := testEnv("shop", "dev", 1, web, svc("db", addr(11)), many)
	shop.Gateway, shop.IP = e.gw, e.ip
	shop.CreatedAt = epoch.Add(time.Hour)
	// Another project's env named dev, created first: it owns the short
	// names on the host, but not inside shop/dev.
	blog := testEnv("blog", "dev", 2, svc("db", "10.250.0.99"))
	blog.Gateway = netip.Addr{}
	z := NewZone("test", []*state.Env{shop, blog}, 1)

	s := NewServer(Options{Suffix: "test", Addrs: []string{"127.0.0.1:0"}, EnvPort: 53, Logf: t.Logf,
		Forward: NewForwarder(func() []string { return []string{up.addr} }, time.Second)})
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetZone(z)
	if got := s.EnvAddrs(); !slices.Equal(got, []netip.AddrPort{netip.AddrPortFrom(e.gw, 53)}) {
		t.Fatalf("env listeners %v", got)
	}
	rc := ResolvConf(shop, "test")
	hostResolv, _ := os.ReadFile("/etc/resolv.conf")
	t.Cleanup(func() {
		if b, _ := os.ReadFile("/etc/resolv.conf"); string(b) != string(hostResolv) {
			t.Errorf("the host's /etc/resolv.conf changed")
		}
	})

	tests := []struct {
		name, qname string
		want        []string
	}{
		{"bare_service", "db", []string{addr(11)}},
		{"short_service_own_env_wins", "db.dev.test", []string{addr(11)}},
		{"canonical_other_project", "db.dev.blog.test", []string{"10.250.0.99"}},
		{"canonical", "db.dev.shop.test", []string{addr(11)}},
		{"apex", "shop.dev.test", []string{addr(10)}},
		{"wildcard_below_apex", "admin.shop.dev.test", []string{addr(10)}},
		{"tcp_fallback_60_replicas", "many", manyAddrs},
		{"forwarded", "www.example.org", nil}, // answered by the fake upstream
	}
	t.Run("getent", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got := parseGetent(e.inEnv(t, rc, nil, "getent", "ahostsv4", tt.qname))
				checkAddrs(t, tt.qname, got, tt.want)
			})
		}
	})
	t.Run("go_resolver", func(t *testing.T) {
		var names []string
		for _, tt := range tests {
			names = append(names, tt.qname)
		}
		out := e.inEnv(t, rc, []string{"GODEBUG=netdns=go", "CILO_DNS_TEST_RESOLVE=" + strings.Join(names, ",")},
			os.Args[0], "-test.run=^TestHelperResolve$")
		got := map[string][]string{}
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) > 1 && f[0] == "resolved" {
				got[f[1]] = f[2:]
			}
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) { checkAddrs(t, tt.qname, got[tt.qname], tt.want) })
		}
	})
	t.Run("env_listener_removed_with_env", func(t *testing.T) {
		s.SetZone(NewZone("test", []*state.Env{blog}, 2))
		if got := s.EnvAddrs(); len(got) != 0 {
			t.Fatalf("env listeners after destroy: %v", got)
		}
		c := &mdns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
		if r, _, err := c.Exchange(question("db.dev.test", mdns.TypeA), netip.AddrPortFrom(e.gw, 53).String()); err == nil {
			t.Fatalf("gateway still answers: %v", r)
		}
	})
}

func checkAddrs(t *testing.T, name string, got, want []string) {
	t.Helper()
	slices.Sort(got)
	if want == nil { // forwarded: one address from the fake upstream
		if len(got) != 1 || !strings.HasPrefix(got[0], "192.0.2.") {
			t.Errorf("%s: %v, want one 192.0.2.x from the fake upstream", name, got)
		}
		return
	}
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("%s: %d addresses %v, want %d %v", name, len(got), got, len(want), want)
	}
}

// parseGetent returns the distinct addresses getent ahostsv4 printed.
func parseGetent(out string) []string {
	var got []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && !slices.Contains(got, f[0]) {
			got = append(got, f[0])
		}
	}
	return got
}

// TestHelperResolve is not a test: TestFromInsideEnv runs the test binary
// inside the env with CILO_DNS_TEST_RESOLVE set, to resolve names with
// Go's resolver there.
func TestHelperResolve(t *testing.T) {
	names := os.Getenv("CILO_DNS_TEST_RESOLVE")
	if names == "" {
		return
	}
	r := &net.Resolver{PreferGo: true}
	for _, n := range strings.Split(names, ",") {
		addrs, err := r.LookupHost(context.Background(), n)
		if err != nil {
			fmt.Printf("error %s %v\n", n, err)
			continue
		}
		fmt.Printf("resolved %s %s\n", n, strings.Join(addrs, " "))
	}
}
