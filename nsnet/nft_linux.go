package nsnet

import (
	"errors"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The host table, named after the prefix:
//
//	table inet <prefix> {
//	  chain forward { type filter hook forward priority filter;
//	    iifname "<prefix>b*" fib daddr . iif oif exists accept  # same env, bridged
//	    iifname "<prefix>b*" ip daddr <pool> drop              # env-to-env
//	  }
//	  chain postrouting { type nat hook postrouting priority srcnat;
//	    ip saddr <pool> oifname != "<prefix>b*" masquerade   # egress
//	  }
//	}
//
// Traffic inside one env stays on its bridge and is never routed, so the
// forward rule only sees packets from one env's bridge to another's (or to
// a pool address with no env, which the unreachable route refuses anyway).
// The host reaches every env: its packets take the output path, not forward.

func (n *Network) hostTable() *nftables.Table {
	return &nftables.Table{Name: n.prefix, Family: nftables.TableFamilyINet}
}

func (n *Network) ensureHostRules() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	t := c.AddTable(n.hostTable())
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	// Flush and refill in one transaction: concurrent cilo processes each
	// leave exactly this rule set, never a mix.
	c.FlushChain(fwd)
	c.FlushChain(post)
	bridges := []byte(n.prefix + "b")
	pool := n.pool.Prefix()
	// Where br_netfilter is loaded, packets bridged between two
	// namespaces of one env pass this hook too, with the env's bridge as
	// iif. "fib daddr . iif oif exists" accepts exactly those: the
	// destination lies behind the interface the packet came in on.
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(
		matchIPv4(),
		matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridges),
		[]expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, FlagIIF: true, ResultOIF: true},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
	)})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(
		matchIPv4(),
		matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridges),
		matchPrefix(16, pool.Addr().AsSlice(), pool.Bits()),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}},
	)})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: concat(
		matchIPv4(),
		matchPrefix(12, pool.Addr().AsSlice(), pool.Bits()),
		matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, bridges),
		[]expr.Any{&expr.Masq{}},
	)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply rules: %w", err)
	}
	return nil
}

func (n *Network) deleteHostRules() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	c.DelTable(n.hostTable())
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables table %s: %w", n.prefix, err)
	}
	return nil
}

// HostRulesInstalled reports whether the host table exists (for doctor and
// tests).
func (n *Network) HostRulesInstalled() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == n.prefix {
			return true, nil
		}
	}
	return false, nil
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// matchIPv4 restricts an inet-family rule to IPv4 packets.
func matchIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// matchIfname compares an interface name with a prefix: data without the
// trailing NUL is what nft writes for `iifname "name*"`.
func matchIfname(key expr.MetaKey, op expr.CmpOp, prefix []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: prefix},
	}
}

// matchPrefix matches the IPv4 header field at offset (12 source, 16
// destination) against addr/bits.
func matchPrefix(offset uint32, addr []byte, bits int) []expr.Any {
	mask := net.CIDRMask(bits, 32)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net.IP(addr).Mask(mask).To4()},
	}
}
