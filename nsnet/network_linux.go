package nsnet

import (
	"github.com/cilo-dev/cilo/nsnet/nsfs"

	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// routeProtocol marks the routes cilo adds (the unreachable pool route), so
// that they can be told apart from the host's own ("proto 99" in ip route).
const routeProtocol netlink.RouteProtocol = 99

// Network is cilo's networking on the host: one address pool and one name
// prefix. Methods are safe to call from concurrent processes; the kernel
// serialises the changes.
type Network struct {
	prefix string
	pool   Pool
}

// New returns the network for the given name prefix and address pool.
func New(prefix string, pool netip.Prefix) (*Network, error) {
	p, err := NewPool(pool)
	if err != nil {
		return nil, err
	}
	return &Network{prefix: prefix, pool: p}, nil
}

// Pool is the network's address pool.
func (n *Network) Pool() Pool { return n.pool }

// Link is everything the kernel holds for one env: the host bridge, the
// veth from the bridge into the env's namespace, and the addresses.
type Link struct {
	Index    int
	Subnet   netip.Prefix
	Gateway  netip.Addr // .1, on the host bridge
	IP       netip.Addr // .2, eth0 inside the namespace
	Bridge   string
	HostVeth string
	Netns    string
}

// Link computes the names and addresses of the env at pool index i whose
// namespace is named netnsName. It creates nothing.
func (n *Network) Link(i int, netnsName string) Link {
	return Link{
		Index:    i,
		Subnet:   n.pool.Subnet(i),
		Gateway:  n.pool.Host(i, 1),
		IP:       n.pool.Host(i, 2),
		Bridge:   fmt.Sprintf("%sb%d", n.prefix, i),
		HostVeth: fmt.Sprintf("%sv%d", n.prefix, i),
		Netns:    netnsName,
	}
}

// HostPrefixes lists the IPv4 routes and addresses of the host that lie
// in or over the pool and are not cilo's own pool route: what an env
// subnet must not overlap. Routes and addresses of cilo's own envs are in
// the list too; callers skip them by index (see [Pool.Allocate]), which
// spares a dump of every link on hosts with hundreds of envs.
func (n *Network) HostPrefixes() ([]netip.Prefix, error) {
	pool := n.pool.Prefix()
	routes, err := listRoutes(&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	var taken []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil || r.Protocol == routeProtocol {
			continue
		}
		if p, ok := prefixOf(r.Dst); ok && p.Bits() > 0 && p.Overlaps(pool) {
			taken = append(taken, p)
		}
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && pool.Contains(ip) {
			taken = append(taken, netip.PrefixFrom(ip, 32))
		}
	}
	return taken, nil
}

func (n *Network) owns(link string) bool {
	rest, ok := strings.CutPrefix(link, n.prefix)
	if !ok || len(rest) < 2 {
		return false
	}
	switch rest[0] {
	case 'b', 'v', 's':
		return rest[1] >= '0' && rest[1] <= '9'
	}
	return false
}

func prefixOf(ipn *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(ipn.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := ipn.Mask.Size()
	return netip.PrefixFrom(ip, ones).Masked(), true
}

// EnsureHost makes the host-wide pieces every env relies on: IPv4
// forwarding, an unreachable route over the whole pool (a pool address
// with no env behind it never leaves the machine) and the nftables table
// that isolates envs and masquerades their egress. It is idempotent.
func (n *Network) EnsureHost(ctx context.Context) error {
	if err := writeSysctl("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	if err := n.ensurePoolRoute(); err != nil {
		return err
	}
	if err := n.ensureHostRules(); err != nil {
		return fmt.Errorf("install nftables table %s: %w", n.prefix, err)
	}
	return nil
}

// ensurePoolRoute adds the unreachable route over the pool unless it is
// there: every create calls it, and a route listing is far cheaper than a
// replace, which the kernel serializes with every other route change.
func (n *Network) ensurePoolRoute() error {
	route := n.poolRoute()
	ours, err := listRoutes(&netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: routeProtocol, Type: unix.RTN_UNREACHABLE},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TYPE)
	if err != nil {
		return fmt.Errorf("list routes of pool %s: %w", n.pool.Prefix(), err)
	}
	for _, r := range ours {
		if r.Dst != nil && r.Dst.String() == route.Dst.String() {
			return nil
		}
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("add unreachable route for pool %s: %w", n.pool.Prefix(), err)
	}
	return nil
}

func (n *Network) poolRoute() *netlink.Route {
	p := n.pool.Prefix()
	return &netlink.Route{
		Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
		Type:     unix.RTN_UNREACHABLE,
		Protocol: routeProtocol,
		Table:    unix.RT_TABLE_MAIN,
	}
}

// TeardownHost removes what EnsureHost made. Users keep the unreachable
// route and the table between envs; tests and `cilo doctor --fix --all`
// remove them.
func (n *Network) TeardownHost(ctx context.Context) error {
	var errs []error
	if err := netlink.RouteDel(n.poolRoute()); err != nil && !errors.Is(err, unix.ESRCH) {
		errs = append(errs, fmt.Errorf("delete unreachable route %s: %w", n.pool.Prefix(), err))
	}
	if err := n.deleteHostRules(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Create makes the env's bridge, namespace and veth and configures both
// ends. On failure it removes whatever it made.
func (n *Network) Create(ctx context.Context, l Link, label string) (err error) {
	defer func() {
		if err != nil {
			n.Delete(context.WithoutCancel(ctx), l)
		}
	}()
	if err := nsfs.Create(l.Netns); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: l.Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", l.Bridge, err)
	}
	if err := netlink.LinkSetAlias(br, label); err != nil {
		return fmt.Errorf("label bridge %s: %w", l.Bridge, err)
	}
	gw := &netlink.Addr{IPNet: &net.IPNet{IP: l.Gateway.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrAdd(br, gw); err != nil {
		return fmt.Errorf("add gateway %s to bridge %s: %w", l.Gateway, l.Bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", l.Bridge, err)
	}
	return n.attach(l, l.Netns, l.HostVeth, l.IP, label)
}

// Attach joins another namespace (a compose service's) to the env's bridge:
// a veth named hostVeth on the bridge, eth0 inside with addr, a default
// route via the env's gateway and loopback up.
func (n *Network) Attach(ctx context.Context, l Link, netnsName, hostVeth string, addr netip.Addr, label string) (err error) {
	defer func() {
		if err != nil {
			n.Detach(context.WithoutCancel(ctx), hostVeth)
		}
	}()
	return n.attach(l, netnsName, hostVeth, addr, label)
}

func (n *Network) attach(l Link, netnsName, hostVeth string, addr netip.Addr, label string) error {
	ns, err := netns.GetFromPath(nsfs.Path(netnsName))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", netnsName, err)
	}
	defer ns.Close()
	br, err := netlink.LinkByName(l.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", l.Bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostVeth, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s into netns %s: %w", hostVeth, netnsName, err)
	}
	if err := netlink.LinkSetAlias(veth, label); err != nil {
		return fmt.Errorf("label veth %s: %w", hostVeth, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("bring up veth %s: %w", hostVeth, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns %s: %w", netnsName, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in netns %s: %w", netnsName, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in netns %s: %w", netnsName, err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in netns %s: %w", netnsName, err)
	}
	ip := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(eth, ip); err != nil {
		return fmt.Errorf("add %s to eth0 in netns %s: %w", addr, netnsName, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring up eth0 in netns %s: %w", netnsName, err)
	}
	def := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: l.Gateway.AsSlice()}
	if err := h.RouteAdd(def); err != nil {
		return fmt.Errorf("add default route via %s in netns %s: %w", l.Gateway, netnsName, err)
	}
	return nil
}

// Detach removes a service's veth (its peer in the namespace goes with it).
func (n *Network) Detach(ctx context.Context, hostVeth string) error {
	return deleteLink(hostVeth)
}

// Delete removes the env's namespace, veth and bridge. Missing pieces are
// not an error, so Delete finishes an interrupted create or destroy.
func (n *Network) Delete(ctx context.Context, l Link) error {
	var errs []error
	if err := deleteLink(l.HostVeth); err != nil {
		errs = append(errs, err)
	}
	if err := nsfs.Delete(l.Netns); err != nil {
		errs = append(errs, err)
	}
	if err := deleteLink(l.Bridge); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Exists reports whether the env's namespace and bridge are in place (after
// a reboot they are not, and `cilo up` recreates them).
func (n *Network) Exists(l Link) bool {
	if !nsfs.Exists(l.Netns) {
		return false
	}
	// A stat of sysfs is much cheaper than a netlink round trip, and this
	// is on the path of every cilo run.
	if _, err := os.Stat("/sys/class/net/" + l.Bridge); err == nil {
		return true
	}
	_, err := netlink.LinkByName(l.Bridge)
	return err == nil
}

// Links lists the names of cilo's interfaces on the host, for doctor.
func (n *Network) Links() ([]string, error) {
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list host links: %w", err)
	}
	var out []string
	for _, l := range links {
		if n.owns(l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// Netnses lists the pinned namespaces whose name starts with prefix.
func Netnses(prefix string) ([]string, error) {
	ents, err := os.ReadDir(nsfs.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", nsfs.Dir, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

func writeSysctl(path, value string) error {
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set %s=%s: %w", strings.TrimPrefix(path, "/proc/sys/"), value, err)
	}
	return nil
}

// listRoutes dumps the IPv4 routes that match filter's fields in mask
// (table, protocol, type). Strict checking lets the kernel do the
// filtering, so on a host with hundreds of envs a create reads its table,
// not every env's local routes; where the kernel lacks it, the same filter
// runs in userspace.
func listRoutes(filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	h.SetStrictCheck(true) // best effort, see above
	return retryDump(func() ([]netlink.Route, error) { return h.RouteListFiltered(netlink.FAMILY_V4, filter, mask) })
}

// retryDump repeats a netlink dump that the kernel interrupted because the
// table changed meanwhile (other cilo processes create envs in parallel).
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		out, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 20 {
			return out, err
		}
	}
}
