package nsnet

import (
	"github.com/cilo-dev/cilo/nsnet/nsfs"

	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// testNetwork returns a Network with its own name prefix and its own /22 of
// 10.231.0.0/16, torn down when the test ends, pass or fail.
func testNetwork(t *testing.T) *Network {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) to create namespaces, bridges and nftables rules; CI runs it as root")
	}
	var b [4]byte
	rand.Read(b[:])
	r := binary.BigEndian.Uint32(b[:])
	prefix := fmt.Sprintf("t%03x", r%4096)
	pool := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 231, byte((r >> 12) % 64 * 4), 0}), 22)
	n, err := New(prefix, pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.EnsureHost(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.TeardownHost(context.Background()); err != nil {
			t.Errorf("teardown host: %v", err)
		}
	})
	return n
}

func createEnv(t *testing.T, n *Network, i int) Link {
	t.Helper()
	l := n.Link(i, fmt.Sprintf("%s-test-%d", n.prefix, i))
	t.Cleanup(func() {
		if err := n.Delete(context.Background(), l); err != nil {
			t.Errorf("delete env %d: %v", i, err)
		}
	})
	if err := n.Create(context.Background(), l, "cilo-test:"+t.Name()); err != nil {
		t.Fatal(err)
	}
	return l
}

// listenIn starts a TCP server inside the env's namespace that answers its
// own name.
func listenIn(t *testing.T, l Link, addr, reply string) {
	t.Helper()
	var ln net.Listener
	err := nsfs.Do(l.Netns, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(reply))
			c.Close()
		}
	}()
}

// dialFrom connects from inside netns (host when empty) and returns the reply.
func dialFrom(netnsName, addr string) (string, error) {
	var c net.Conn
	dial := func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 400*time.Millisecond)
		return err
	}
	var err error
	if netnsName == "" {
		err = dial()
	} else {
		err = nsfs.Do(netnsName, dial)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Second))
	b := make([]byte, 64)
	k, err := c.Read(b)
	return string(b[:k]), err
}

func TestEnvsIsolatedAndReachable(t *testing.T) {
	n := testNetwork(t)
	a := createEnv(t, n, 0)
	b := createEnv(t, n, 1)
	listenIn(t, a, "0.0.0.0:3000", "a")
	listenIn(t, b, "0.0.0.0:3000", "b")

	tests := []struct {
		name  string
		from  string
		to    string
		want  string
		fails bool
	}{
		{"host_reaches_a", "", a.IP.String() + ":3000", "a", false},
		{"host_reaches_b", "", b.IP.String() + ":3000", "b", false},
		{"a_reaches_own_localhost", a.Netns, "127.0.0.1:3000", "a", false},
		{"b_reaches_own_localhost", b.Netns, "127.0.0.1:3000", "b", false},
		{"a_cannot_reach_b", a.Netns, b.IP.String() + ":3000", "", true},
		{"b_cannot_reach_a", b.Netns, a.IP.String() + ":3000", "", true},
		{"unassigned_pool_address_unreachable", a.Netns, n.pool.Host(3, 2).String() + ":3000", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := dialFrom(tt.from, tt.to)
			if tt.fails {
				if err == nil {
					t.Fatalf("connected to %s, got %q; want failure", tt.to, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("dial %s = %q, %v; want %q", tt.to, got, err, tt.want)
			}
		})
	}
}

func TestDeleteLeavesNothing(t *testing.T) {
	n := testNetwork(t)
	l := n.Link(2, n.prefix+"-gone")
	if err := n.Create(context.Background(), l, "cilo-test"); err != nil {
		t.Fatal(err)
	}
	if !n.Exists(l) {
		t.Fatal("env does not exist after create")
	}
	if err := n.Delete(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	if err := n.Delete(context.Background(), l); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if n.Exists(l) || nsfs.Exists(l.Netns) {
		t.Fatal("namespace survived delete")
	}
	for _, name := range []string{l.Bridge, l.HostVeth} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("link %s survived delete", name)
		}
	}
	if links, _ := n.Links(); len(links) != 0 {
		t.Errorf("links left: %v", links)
	}
}

func TestAllocateSkipsHostRoutes(t *testing.T) {
	n := testNetwork(t)
	// A foreign bridge with an address inside the pool plays the host's own
	// network: allocation must step over it.
	d := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.prefix + "host"}}
	if err := netlink.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(d) })
	addr := n.pool.Host(0, 9)
	if err := netlink.AddrAdd(d, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	taken, err := n.HostPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	i, err := n.Pool().Allocate(func(int) bool { return false }, taken)
	if err != nil {
		t.Fatal(err)
	}
	if i != 1 {
		t.Fatalf("Allocate = %d, want 1 (index 0 overlaps the host's %s)", i, addr)
	}
}

func TestHostTeardown(t *testing.T) {
	n := testNetwork(t)
	ok, err := n.HostRulesInstalled()
	if err != nil || !ok {
		t.Fatalf("host rules installed = %v, %v", ok, err)
	}
	if err := n.TeardownHost(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ok, _ := n.HostRulesInstalled(); ok {
		t.Fatal("nftables table survived teardown")
	}
}

// TestSameEnvNamespacesTalk: two namespaces on one env's bridge (the env
// and a service) reach each other, also where br_netfilter makes bridged
// packets pass the forward hook, while other envs stay cut off.
func TestSameEnvNamespacesTalk(t *testing.T) {
	n := testNetwork(t)
	a := createEnv(t, n, 0)
	b := createEnv(t, n, 1)
	svc := n.prefix + "-test-0-svc"
	if err := nsfs.Create(svc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsfs.Delete(svc) })
	veth := fmt.Sprintf("%ss0x10", n.prefix)
	addr := n.pool.Host(0, 10)
	if err := n.Attach(context.Background(), a, svc, veth, addr, "cilo-test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Detach(context.Background(), veth) })
	listenIn(t, Link{Netns: svc}, "0.0.0.0:5432", "db")

	// The first SYN waits for ARP on a bridge port that just came up;
	// a client retries, and so does this one, for a few seconds.
	var got string
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if got, err = dialFrom(a.Netns, addr.String()+":5432"); err == nil {
			break
		}
	}
	if err != nil || got != "db" {
		t.Fatalf("env to its own service: %q, %v", got, err)
	}
	if got, err := dialFrom(b.Netns, addr.String()+":5432"); err == nil {
		t.Fatalf("other env reached the service: %q", got)
	}
	if got, err := dialFrom("", addr.String()+":5432"); err != nil || got != "db" {
		t.Fatalf("host to the service: %q, %v", got, err)
	}
}

// TestNetnsAlongsideIproute2: namespaces pinned by cilo and by `ip netns`
// share /run/netns; each side can remove its own afterwards.
func TestNetnsAlongsideIproute2(t *testing.T) {
	n := testNetwork(t)
	ours, theirs := n.prefix+"-ours", n.prefix+"-iproute2"
	if err := nsfs.Create(ours); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsfs.Delete(ours) })
	if out, err := exec.Command("ip", "netns", "add", theirs).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", theirs).Run() })
	if out, err := exec.Command("ip", "netns", "exec", ours, "true").CombinedOutput(); err != nil {
		t.Fatalf("ip netns exec in cilo's namespace: %v: %s", err, out)
	}
	if err := nsfs.Delete(ours); err != nil {
		t.Fatalf("delete after ip netns ran: %v", err)
	}
	if _, err := os.Stat(nsfs.Path(ours)); err == nil {
		t.Fatal("namespace file survived delete")
	}
}

// TestEnsureHostKeepsCurrentRules: a repeated EnsureHost leaves a current
// rule set alone (same rule handles: no transaction), and puts back a rule
// set or route that someone damaged.
func TestEnsureHostKeepsCurrentRules(t *testing.T) {
	n := testNetwork(t)
	ctx := context.Background()
	handles := func() []uint64 {
		t.Helper()
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseLasting()
		var hs []uint64
		for _, chain := range []string{"forward", "postrouting"} {
			rules, err := c.GetRules(n.hostTable(), &nftables.Chain{Name: chain, Table: n.hostTable()})
			if err != nil {
				t.Fatalf("list %s rules: %v", chain, err)
			}
			for _, r := range rules {
				hs = append(hs, r.Handle)
			}
		}
		return hs
	}
	before := handles()
	if err := n.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	if after := handles(); !slices.Equal(before, after) {
		t.Fatalf("EnsureHost rewrote a current rule set: handles %v, then %v", before, after)
	}

	damage := []struct {
		name string
		do   func() error
	}{
		{"flushed forward chain", func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			defer c.CloseLasting()
			c.FlushChain(&nftables.Chain{Name: "forward", Table: n.hostTable()})
			return c.Flush()
		}},
		{"deleted table", n.deleteHostRules},
		{"deleted pool route", func() error { return netlink.RouteDel(n.poolRoute()) }},
	}
	for _, d := range damage {
		if err := d.do(); err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		if err := n.EnsureHost(ctx); err != nil {
			t.Fatalf("EnsureHost after %s: %v", d.name, err)
		}
		if ok, err := n.HostRulesInstalled(); err != nil || !ok {
			t.Fatalf("after %s: host rules current = %v, %v", d.name, ok, err)
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, n.poolRoute(), netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if err != nil || len(routes) != 1 {
			t.Fatalf("after %s: pool routes %v, %v; want the unreachable route", d.name, routes, err)
		}
	}
}
