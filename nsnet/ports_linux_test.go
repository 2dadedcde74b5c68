package nsnet

import (
	"github.com/cilo-dev/cilo/nsnet/nsfs"

	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// serviceNetns attaches a service namespace at host h of env l, torn down
// at the end of the test.
func serviceNetns(t *testing.T, n *Network, l Link, h int) (string, netip.Addr) {
	t.Helper()
	name := fmt.Sprintf("%s-svc-%d-%d", n.prefix, l.Index, h)
	veth := fmt.Sprintf("%ss%dx%d", n.prefix, l.Index, h)
	addr := n.pool.Host(l.Index, h)
	t.Cleanup(func() {
		n.Detach(context.Background(), veth)
		nsfs.Delete(name)
	})
	if err := nsfs.Create(name); err != nil {
		t.Fatal(err)
	}
	if err := n.Attach(context.Background(), l, name, veth, addr, "cilo-test:"+t.Name()); err != nil {
		t.Fatal(err)
	}
	return name, addr
}

func TestSetPortForwards(t *testing.T) {
	n := testNetwork(t)
	a := createEnv(t, n, 0)
	b := createEnv(t, n, 1)
	aSvc, aAddr := serviceNetns(t, n, a, 10)
	bSvc, bAddr := serviceNetns(t, n, b, 10)
	listenIn(t, Link{Netns: aSvc}, "0.0.0.0:5432", "db-a")
	listenIn(t, Link{Netns: bSvc}, "0.0.0.0:5432", "db-b")
	if err := SetPortForwards(a.Netns, []PortForward{{Protocol: "tcp", Port: 15432, To: netip.AddrPortFrom(aAddr, 5432)}}); err != nil {
		t.Fatal(err)
	}
	if err := SetPortForwards(b.Netns, []PortForward{{Protocol: "tcp", Port: 15432, To: netip.AddrPortFrom(bAddr, 5432)}}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		env  Link
		dial func() (net.Conn, error)
		want string
	}{
		{"a_ipv4_localhost", a, func() (net.Conn, error) { return net.DialTimeout("tcp4", "127.0.0.1:15432", time.Second) }, "db-a"},
		{"b_ipv4_localhost", b, func() (net.Conn, error) { return net.DialTimeout("tcp4", "127.0.0.1:15432", time.Second) }, "db-b"},
		// A client that tries ::1 first (Go, Node's happy eyeballs): ::1
		// is refused at once inside the env, and the client falls back to
		// 127.0.0.1, which is forwarded.
		{"a_ipv6_first_falls_back", a, dialV6First, "db-a"},
		{"b_ipv6_first_falls_back", b, dialV6First, "db-b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			err := nsfs.Do(tt.env.Netns, func() error {
				c, err := tt.dial()
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(time.Second))
				buf := make([]byte, 64)
				k, err := c.Read(buf)
				got = string(buf[:k])
				return err
			})
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}

	got, err := PortForwards(a.Netns)
	if err != nil || len(got) != 1 || got[0].Port != 15432 || got[0].To != netip.AddrPortFrom(aAddr, 5432) || got[0].Protocol != "tcp" {
		t.Fatalf("PortForwards = %+v, %v", got, err)
	}
	// Replacing with nothing removes the table; a second removal is fine.
	for i := 0; i < 2; i++ {
		if err := SetPortForwards(a.Netns, nil); err != nil {
			t.Fatalf("clear %d: %v", i, err)
		}
	}
	if got, err := PortForwards(a.Netns); err != nil || len(got) != 0 {
		t.Fatalf("after clear PortForwards = %+v, %v", got, err)
	}
	if _, err := dialFrom(a.Netns, "127.0.0.1:15432"); err == nil {
		t.Fatal("forward still answers after clear")
	}
}

// dialV6First dials ::1, then 127.0.0.1, as a resolver answering localhost
// with ::1 first makes clients do.
func dialV6First() (net.Conn, error) {
	if c, err := net.DialTimeout("tcp6", "[::1]:15432", time.Second); err == nil {
		return c, nil
	}
	return net.DialTimeout("tcp4", "127.0.0.1:15432", time.Second)
}

func TestCheckPortForwards(t *testing.T) {
	to := netip.MustParseAddrPort("10.0.0.10:80")
	tests := []struct {
		name     string
		fwds     []PortForward
		conflict bool
		bad      bool
	}{
		{"empty", nil, false, false},
		{"tcp_and_udp_same_port", []PortForward{{"tcp", 53, to}, {"udp", 53, to}}, false, false},
		{"tcp_twice", []PortForward{{"tcp", 8080, to}, {"tcp", 8080, netip.MustParseAddrPort("10.0.0.11:80")}}, true, false},
		{"bad_protocol", []PortForward{{"sctp", 1, to}}, false, true},
		{"zero_port", []PortForward{{"tcp", 0, to}}, false, true},
		{"ipv6_target", []PortForward{{"tcp", 1, netip.MustParseAddrPort("[::1]:80")}}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPortForwards(tt.fwds)
			if got := errors.Is(err, ErrPortConflict); got != tt.conflict {
				t.Fatalf("conflict = %v (%v), want %v", got, err, tt.conflict)
			}
			if (err != nil) != (tt.conflict || tt.bad) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func FuzzCheckPortForwards(f *testing.F) {
	f.Add("tcp", uint16(80), "10.0.0.1", uint16(80), "udp", uint16(80))
	f.Add("tcp", uint16(80), "10.0.0.1", uint16(80), "tcp", uint16(80))
	f.Fuzz(func(t *testing.T, p1 string, port1 uint16, addr string, target uint16, p2 string, port2 uint16) {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return
		}
		fwds := []PortForward{{p1, port1, netip.AddrPortFrom(a, target)}, {p2, port2, netip.AddrPortFrom(a, target)}}
		err = CheckPortForwards(fwds)
		if err == nil && p1 == p2 && port1 == port2 {
			t.Fatalf("duplicate %s/%d accepted", p1, port1)
		}
	})
}
