package dns

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// TTL is the time to live, in seconds, of every answer cilo gives for its
// own names, positive and negative. It is short so that a resolver caching
// in front of cilo (systemd-resolved, glibc's nscd) sees an env appear or
// go away within a second.
const TTL = 1

// ingressNames are the service names taken as an env's ingress, in this
// order, when no service is labelled cilo.ingress: "true".
var ingressNames = []string{"web", "app", "frontend", "nginx"}

// Node is what one name answers: the addresses of one env's service, apex
// or extra hostname. A node without addresses is a name that exists but
// has no A record (NODATA), e.g. a service that is not running.
type Node struct {
	Addrs []netip.Addr
	Env   string // state key (project/name) of the env the name belongs to

	canonical bool // the name includes the project: it beats every short name
}

// View is how the zone looks from inside one env: its bare service names
// (`db.`) resolve, and its own short names (`db.dev.test.`) win over those
// of another project's env of the same name.
type View struct {
	Env     string // state key of the env
	Project string
	Name    string
	Gateway netip.Addr

	names map[string]*Node
	wild  map[string]*Node
}

// Zone is an immutable snapshot of every name cilo answers under one
// suffix. It is built once per state change by [NewZone] and then only
// read, by any number of goroutines, which is what lets the server swap it
// atomically without locks on the query path.
type Zone struct {
	suffix string // lowercased FQDN: "test."
	soa    *mdns.SOA
	names  map[string]*Node    // exact names, host view
	wild   map[string]*Node    // names whose whole subtree answers as them (apexes)
	ents   map[string]struct{} // empty non-terminals and the suffix itself
	views  map[netip.Addr]*View
	envs   int
	recs   int

	contested []string // names several envs claim; see rank

	cache *respCache // packed answers of this zone, see server.go
}

// rank orders the claims of several envs on one name: canonical names
// first, then the env created first, then by key, then apex before service
// before extra hostname. The lowest rank owns the name.
type rank struct {
	short   bool
	created time.Time
	key     string
	kind    int
}

const (
	kindApex = iota
	kindService
	kindHostname
)

func (a rank) less(b rank) bool {
	if a.short != b.short {
		return !a.short
	}
	if !a.created.Equal(b.created) {
		return a.created.Before(b.created)
	}
	if a.key != b.key {
		return a.key < b.key
	}
	return a.kind < b.kind
}

type claim struct {
	node      *Node
	rank      rank
	contested bool // another env claimed the name too, and lost
}

type claims map[string]claim

func (c claims) add(name string, n *Node, r rank) {
	old, ok := c[name]
	contested := ok && (old.contested || old.rank.key != r.key)
	if ok && !r.less(old.rank) {
		old.contested = contested
		c[name] = old
		return
	}
	c[name] = claim{node: n, rank: r, contested: contested}
}

func (c claims) nodes() map[string]*Node {
	m := make(map[string]*Node, len(c))
	for name, cl := range c {
		m[name] = cl.node
	}
	return m
}

// Served reports whether an env in this status has names: envs being
// created or destroyed have none.
func Served(s state.Status) bool {
	return s == state.StatusRunning || s == state.StatusStopped
}

// NewZone builds the zone of suffix (e.g. "test") from envs. Envs that are
// not [Served] are left out. serial becomes the SOA serial; callers pass a
// number that grows with every rebuild.
//
// For env E of project P with service S, extra hostname H and suffix T:
//
//	S.E.P.T, H.E.P.T        canonical service and hostname names
//	E.P.T and *.E.P.T       canonical apex: the ingress service
//	S.E.T, H.E.T            short forms
//	P.E.T and *.P.E.T       short apex (CILO_BASE_URL's host)
//	S, H, P                 bare names, only from inside E
//
// A name claimed by several envs answers for one of them only (see rank).
func NewZone(suffix string, envs []*state.Env, serial uint32) *Zone {
	suffix = mdns.CanonicalName(suffix)
	z := &Zone{
		suffix: suffix,
		ents:   map[string]struct{}{suffix: {}},
		views:  map[netip.Addr]*View{},
		cache:  newRespCache(),
		soa: &mdns.SOA{
			Hdr:     mdns.RR_Header{Name: suffix, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: TTL},
			Ns:      "ns." + suffix,
			Mbox:    "hostmaster." + suffix,
			Serial:  serial,
			Refresh: 60,
			Retry:   10,
			Expire:  600,
			Minttl:  TTL,
		},
	}
	names, wild := claims{}, claims{}
	for _, e := range envs {
		if e == nil || !Served(e.Status) {
			continue
		}
		z.envs++
		z.addEnv(e, names, wild)
	}
	z.names, z.wild = names.nodes(), wild.nodes()
	for name, cl := range names {
		if cl.contested {
			z.contested = append(z.contested, name)
		}
	}
	slices.Sort(z.contested)
	for name, n := range z.names {
		z.recs += len(n.Addrs)
		z.addENTs(name)
	}
	for name := range z.wild {
		z.addENTs(name)
	}
	for name := range z.names {
		delete(z.ents, name)
	}
	for name := range z.wild {
		delete(z.ents, name)
	}
	return z
}

func (z *Zone) addEnv(e *state.Env, names, wild claims) {
	project, env := strings.ToLower(e.Project), strings.ToLower(e.Name)
	base := rank{created: e.CreatedAt, key: e.Key()}
	canon := env + "." + project + "." + z.suffix
	short := env + "." + z.suffix
	view := &View{Env: e.Key(), Project: e.Project, Name: e.Name, Gateway: e.Gateway,
		names: map[string]*Node{}, wild: map[string]*Node{}}
	local := claims{}

	add := func(rel string, addrs []netip.Addr, kind int) {
		r := base
		r.kind = kind
		cn := &Node{Addrs: addrs, Env: base.key, canonical: true}
		sn := &Node{Addrs: addrs, Env: base.key}
		r.short = false
		names.add(rel+"."+canon, cn, r)
		r.short = true
		names.add(rel+"."+short, sn, r)
		local.add(rel+"."+short, sn, r)
		if !strings.Contains(rel, ".") {
			local.add(rel+".", sn, r)
		}
	}

	apex := apexAddrs(e)
	r := base
	r.kind = kindApex
	cn := &Node{Addrs: apex, Env: base.key, canonical: true}
	names.add(canon, cn, r)
	wild.add(canon, cn, r)
	sn := &Node{Addrs: apex, Env: base.key}
	r.short = true
	names.add(project+"."+short, sn, r)
	wild.add(project+"."+short, sn, r)
	local.add(project+"."+short, sn, r)
	local.add(project+".", sn, r)
	view.wild[project+"."+short] = sn

	for _, s := range e.Services {
		name := strings.ToLower(s.Name)
		if validRelative(name) {
			add(name, s.Addrs, kindService)
		}
		for _, h := range s.Hostnames {
			h = strings.ToLower(strings.TrimSuffix(h, "."))
			if strings.HasSuffix(h+".", "."+z.suffix) {
				abs := h + "."
				if mdns.IsSubDomain(short, abs) && abs != short {
					// db.dev.test given in full: same as the relative db.
					h = strings.TrimSuffix(abs, "."+short)
				} else {
					continue // a name of another env or outside the env: not this env's to claim
				}
			}
			if validRelative(h) {
				add(h, s.Addrs, kindHostname)
			}
		}
	}
	view.names = local.nodes()
	if e.Gateway.IsValid() {
		z.views[e.Gateway] = view
	}
}

// validRelative reports whether rel can be put in front of a domain name.
func validRelative(rel string) bool {
	if rel == "" {
		return false
	}
	_, ok := mdns.IsDomainName(rel + ".")
	return ok && !strings.ContainsAny(rel, `\*`)
}

// apexAddrs is what the env's apex answers: the ingress service, else a
// conventionally named one, else the env's own address.
func apexAddrs(e *state.Env) []netip.Addr {
	svcs := slices.Clone(e.Services)
	slices.SortFunc(svcs, func(a, b state.Service) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range svcs {
		if s.Ingress && len(s.Addrs) > 0 {
			return s.Addrs
		}
	}
	for _, want := range ingressNames {
		for _, s := range svcs {
			if strings.EqualFold(s.Name, want) && len(s.Addrs) > 0 {
				return s.Addrs
			}
		}
	}
	if e.IP.IsValid() {
		return []netip.Addr{e.IP}
	}
	return nil
}

// addENTs records every ancestor of name below the suffix as existing.
func (z *Zone) addENTs(name string) {
	for off, end := mdns.NextLabel(name, 0); !end; off, end = mdns.NextLabel(name, off) {
		parent := name[off:]
		if len(parent) <= len(z.suffix) {
			return
		}
		z.ents[parent] = struct{}{}
	}
}

// Suffix is the zone's suffix as a lowercased FQDN ("test.").
func (z *Zone) Suffix() string { return z.suffix }

// Serial is the zone's SOA serial.
func (z *Zone) Serial() uint32 { return z.soa.Serial }

// Envs is the number of envs the zone serves.
func (z *Zone) Envs() int { return z.envs }

// Names is the number of exact names the host view answers.
func (z *Zone) Names() int { return len(z.names) }

// Records is the number of A records the host view holds.
func (z *Zone) Records() int { return z.recs }

// Contested lists the names (lowercased FQDNs) that several envs claim on
// the host, each answering for the env that [NewZone]'s rule picked.
func (z *Zone) Contested() []string { return z.contested }

// Views returns the view of each env that has a gateway, keyed by it.
func (z *Zone) Views() map[netip.Addr]*View { return z.views }

// View returns the view of the env whose gateway is addr, or nil.
func (z *Zone) View(addr netip.Addr) *View { return z.views[addr] }

// Result says how a name resolved.
type Result int

const (
	NXDomain Result = iota // no such name
	NoData                 // the name exists but has no records (an empty non-terminal)
	Found                  // the node answers
)

// Lookup resolves qname (a lowercased FQDN) as seen from view v (nil: the
// host). Bare names only exist in a view. Canonical names beat everything,
// then v's own names, then the host view's names; wildcards below an apex
// are tried only after exact names and empty non-terminals.
func (z *Zone) Lookup(v *View, qname string) (*Node, Result) {
	g := z.names[qname]
	if g != nil && g.canonical {
		return g, Found
	}
	if v != nil {
		if n := v.names[qname]; n != nil {
			return n, Found
		}
	}
	if g != nil {
		return g, Found
	}
	if !mdns.IsSubDomain(z.suffix, qname) {
		return nil, NXDomain
	}
	if _, ok := z.ents[qname]; ok {
		return nil, NoData
	}
	for off, end := mdns.NextLabel(qname, 0); !end; off, end = mdns.NextLabel(qname, off) {
		parent := qname[off:]
		if len(parent) <= len(z.suffix) {
			break
		}
		g := z.wild[parent]
		if g != nil && g.canonical {
			return g, Found
		}
		if v != nil {
			if n := v.wild[parent]; n != nil {
				return n, Found
			}
		}
		if g != nil {
			return g, Found
		}
	}
	return nil, NXDomain
}
