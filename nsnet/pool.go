package nsnet

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrPoolExhausted is returned when every /24 of the pool is taken.
var ErrPoolExhausted = errors.New("address pool exhausted")

// Pool hands out the /24 subnets of an IPv4 prefix by index: index i is the
// i-th /24 of the pool. Envs take the lowest free index.
type Pool struct {
	prefix netip.Prefix
}

// NewPool checks that p can be split into /24s.
func NewPool(p netip.Prefix) (Pool, error) {
	p = p.Masked()
	if !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 24 {
		return Pool{}, fmt.Errorf("address pool %s: must be an IPv4 prefix from /8 to /24", p)
	}
	return Pool{prefix: p}, nil
}

// Prefix is the whole pool.
func (p Pool) Prefix() netip.Prefix { return p.prefix }

// Size is how many /24s the pool holds.
func (p Pool) Size() int { return 1 << (24 - p.prefix.Bits()) }

// Subnet is the /24 at index i.
func (p Pool) Subnet(i int) netip.Prefix {
	b := p.prefix.Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8
	n += uint32(i) << 8
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), 0}), 24)
}

// Host is address .h of the subnet at index i (1 is the gateway, 2 the env).
func (p Pool) Host(i, h int) netip.Addr {
	b := p.Subnet(i).Addr().As4()
	b[3] = byte(h)
	return netip.AddrFrom4(b)
}

// Index returns the index of the /24 holding a, or false when a is outside
// the pool.
func (p Pool) Index(a netip.Addr) (int, bool) {
	if !p.prefix.Contains(a) {
		return 0, false
	}
	x, base := a.As4(), p.prefix.Addr().As4()
	n := uint32(x[0])<<16 | uint32(x[1])<<8 | uint32(x[2])
	m := uint32(base[0])<<16 | uint32(base[1])<<8 | uint32(base[2])
	return int(n - m), true
}

// Allocate returns the lowest index that is neither used nor overlapping one
// of the taken prefixes (the host's own routes and addresses).
func (p Pool) Allocate(used func(int) bool, taken []netip.Prefix) (int, error) {
	for i := 0; i < p.Size(); i++ {
		if used(i) {
			continue
		}
		s := p.Subnet(i)
		if overlapsAny(s, taken) {
			continue
		}
		return i, nil
	}
	return 0, fmt.Errorf("%w: all %d /24s of %s are in use; destroy envs (cilo list --all) or configure a larger pool (--pool, CILO_POOL)", ErrPoolExhausted, p.Size(), p.prefix)
}

func overlapsAny(s netip.Prefix, taken []netip.Prefix) bool {
	for _, t := range taken {
		if s.Overlaps(t) {
			return true
		}
	}
	return false
}
