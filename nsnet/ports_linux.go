package nsnet

import (
	"github.com/cilo-dev/cilo/nsnet/nsfs"

	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// PortForward makes localhost:Port inside an env's namespace reach a
// compose service's To address, the way Docker forwards published ports
// without its userland proxy.
type PortForward struct {
	Protocol string // "tcp" or "udp"
	Port     uint16 // the published port, on 127.0.0.1 inside the env
	To       netip.AddrPort
}

// ErrPortConflict is wrapped when one port is forwarded twice in one env.
var ErrPortConflict = errors.New("port published twice")

// portsTable is the table inside an env's namespace (not on the host, so
// it needs no prefix: nothing else writes tables there):
//
//	table ip cilo_ports {
//	  chain output { type nat hook output priority dstnat;
//	    ip daddr 127.0.0.1 tcp dport 5432 dnat to 10.224.0.10:5432
//	  }
//	  chain postrouting { type nat hook postrouting priority srcnat;
//	    ip saddr 127.0.0.0/8 oifname "eth0" masquerade
//	  }
//	}
//
// Packets to 127.0.0.1 are only routed out of eth0 with route_localnet=1;
// the masquerade then gives them the env's own address as source, so the
// service's replies come back.
var portsTable = &nftables.Table{Name: "cilo_ports", Family: nftables.TableFamilyIPv4}

// CheckPortForwards reports the first port forwarded twice (same protocol
// and port), wrapping [ErrPortConflict].
func CheckPortForwards(fwds []PortForward) error {
	seen := map[string]PortForward{}
	for _, f := range fwds {
		if f.Protocol != "tcp" && f.Protocol != "udp" {
			return fmt.Errorf("forward port %d: protocol %q is not tcp or udp", f.Port, f.Protocol)
		}
		if !f.To.Addr().Is4() || f.Port == 0 || f.To.Port() == 0 {
			return fmt.Errorf("forward %s port %d to %s: need a port and an IPv4 address", f.Protocol, f.Port, f.To)
		}
		key := fmt.Sprintf("%s/%d", f.Protocol, f.Port)
		if prev, ok := seen[key]; ok {
			return fmt.Errorf("localhost:%d/%s to both %s and %s: %w", f.Port, f.Protocol, prev.To, f.To, ErrPortConflict)
		}
		seen[key] = f
	}
	return nil
}

// SetPortForwards replaces the port forwards of the named env namespace
// with fwds (none removes the table) in one nftables transaction, and turns
// on route_localnet there. It fails before changing anything when a port
// is forwarded twice.
func SetPortForwards(netnsName string, fwds []PortForward) error {
	if err := CheckPortForwards(fwds); err != nil {
		return err
	}
	f, err := os.Open(nsfs.Path(netnsName))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", netnsName, err)
	}
	defer f.Close()
	if len(fwds) > 0 {
		err := nsfs.Do(netnsName, func() error {
			for _, dev := range []string{"all", "eth0"} {
				p := filepath.Join("/proc/sys/net/ipv4/conf", dev, "route_localnet")
				if err := writeSysctl(p, "1"); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("enable route_localnet in netns %s: %w", netnsName, err)
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return fmt.Errorf("nftables in netns %s: %w", netnsName, err)
	}
	defer c.CloseLasting()
	// add+delete+add: one transaction that works whether or not the table
	// exists, so a reader never sees half a rule set.
	c.AddTable(portsTable)
	c.DelTable(portsTable)
	if len(fwds) > 0 {
		t := c.AddTable(portsTable)
		out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
		post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		for _, fw := range fwds {
			c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: dnatExprs(fw)})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: concat(
			matchPrefix(12, []byte{127, 0, 0, 0}, 8),
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("eth0")},
				&expr.Masq{},
			},
		)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("set port forwards in netns %s: %w", netnsName, err)
	}
	return nil
}

// PortForwards lists the forwards installed in the named namespace (for
// tests, status and doctor).
func PortForwards(netnsName string) ([]PortForward, error) {
	f, err := os.Open(nsfs.Path(netnsName))
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsName, err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return nil, fmt.Errorf("nftables in netns %s: %w", netnsName, err)
	}
	defer c.CloseLasting()
	rules, err := c.GetRules(portsTable, &nftables.Chain{Name: "output", Table: portsTable})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list port forwards in netns %s: %w", netnsName, err)
	}
	var out []PortForward
	for _, r := range rules {
		if fw, ok := parseDNAT(r.Exprs); ok {
			out = append(out, fw)
		}
	}
	return out, nil
}

func dnatExprs(fw PortForward) []expr.Any {
	proto := byte(unix.IPPROTO_TCP)
	if fw.Protocol == "udp" {
		proto = unix.IPPROTO_UDP
	}
	to := fw.To.Addr().As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{127, 0, 0, 1}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(fw.Port)},
		&expr.Immediate{Register: 1, Data: to[:]},
		&expr.Immediate{Register: 2, Data: be16(fw.To.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

// parseDNAT reads back a rule written by dnatExprs.
func parseDNAT(exprs []expr.Any) (PortForward, bool) {
	var fw PortForward
	var imm [][]byte
	cmps := 0
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Cmp:
			switch cmps {
			case 0:
				fw.Protocol = "tcp"
				if len(x.Data) == 1 && x.Data[0] == unix.IPPROTO_UDP {
					fw.Protocol = "udp"
				}
			case 2:
				if len(x.Data) == 2 {
					fw.Port = binary.BigEndian.Uint16(x.Data)
				}
			}
			cmps++
		case *expr.Immediate:
			imm = append(imm, x.Data)
		}
	}
	if len(imm) != 2 || len(imm[0]) != 4 || len(imm[1]) != 2 || fw.Port == 0 {
		return PortForward{}, false
	}
	fw.To = netip.AddrPortFrom(netip.AddrFrom4([4]byte(imm[0])), binary.BigEndian.Uint16(imm[1]))
	return fw, true
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// ifname is an interface name as the kernel compares it: NUL-padded to
// IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
