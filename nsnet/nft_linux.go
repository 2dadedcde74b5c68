package nsnet

import (
	"bytes"
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

// ensureHostRules installs the host table unless exactly this version of
// it is in place. Every create calls it; a check is a read, while a
// rewrite is an nftables transaction, which the kernel serializes with
// every other one on the host (about 10 ms each here).
func (n *Network) ensureHostRules() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	if n.hostRulesCurrent(c) {
		return nil
	}
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
	for _, r := range n.hostRules(t, fwd, post) {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply rules: %w", err)
	}
	return nil
}

// hostRulesTag marks each host rule with the rule set's version and pool,
// so a check can tell the current rule set from an older or foreign one
// without comparing expressions.
func (n *Network) hostRulesTag() []byte {
	return []byte("cilo-host-rules/v1 " + n.pool.Prefix().String())
}

func (n *Network) hostRules(t *nftables.Table, fwd, post *nftables.Chain) []*nftables.Rule {
	bridges := []byte(n.prefix + "b")
	pool := n.pool.Prefix()
	tag := n.hostRulesTag()
	return []*nftables.Rule{
		// Where br_netfilter is loaded, packets bridged between two
		// namespaces of one env pass this hook too, with the env's
		// bridge as iif. "fib daddr . iif oif exists" accepts exactly
		// those: the destination lies behind the interface the packet
		// came in on.
		{Table: t, Chain: fwd, UserData: tag, Exprs: concat(
			matchIPv4(),
			matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridges),
			[]expr.Any{
				&expr.Fib{Register: 1, FlagDADDR: true, FlagIIF: true, ResultOIF: true},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
				&expr.Verdict{Kind: expr.VerdictAccept},
			},
		)},
		{Table: t, Chain: fwd, UserData: tag, Exprs: concat(
			matchIPv4(),
			matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridges),
			matchPrefix(16, pool.Addr().AsSlice(), pool.Bits()),
			[]expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}},
		)},
		{Table: t, Chain: post, UserData: tag, Exprs: concat(
			matchIPv4(),
			matchPrefix(12, pool.Addr().AsSlice(), pool.Bits()),
			matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, bridges),
			[]expr.Any{&expr.Masq{}},
		)},
	}
}

// hostRulesCurrent reports whether both chains hold exactly the rules of
// this version and pool (two in forward, one in postrouting).
func (n *Network) hostRulesCurrent(c *nftables.Conn) bool {
	t := n.hostTable()
	want := map[string]int{"forward": 2, "postrouting": 1}
	for chain, count := range want {
		rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil || len(rules) != count {
			return false
		}
		for _, r := range rules {
			if !bytes.Equal(r.UserData, n.hostRulesTag()) {
				return false
			}
		}
	}
	return true
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

// HostRulesInstalled reports whether the host table holds the current
// rule set (for doctor and tests).
func (n *Network) HostRulesInstalled() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	return n.hostRulesCurrent(c), nil
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
