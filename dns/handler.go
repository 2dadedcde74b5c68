package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// udpSize is the EDNS0 payload size cilo advertises and the most it sends
// over UDP (the DNS flag day 2020 value: no IP fragmentation).
const udpSize = 1232

// Exchanger forwards a query that is not cilo's to an upstream resolver.
// It must be safe for concurrent use.
type Exchanger interface {
	Exchange(ctx context.Context, r *mdns.Msg) (*mdns.Msg, error)
}

// Handler answers DNS queries: authoritatively for names under the zone's
// suffix and for an env's bare names, by forwarding for everything else.
// The view is chosen by the local address the query arrived on: a query to
// an env's gateway sees that env's view. Handler is safe for concurrent
// use; it implements [mdns.Handler].
type Handler struct {
	zone    func() *Zone
	fwd     Exchanger
	timeout time.Duration
	base    context.Context // parent of forwarded queries: the server's life
}

// NewHandler returns a handler answering from whatever zone returns at the
// time of each query, and forwarding through fwd (nil: SERVFAIL for every
// name that is not cilo's).
func NewHandler(zone func() *Zone, fwd Exchanger) *Handler {
	return &Handler{zone: zone, fwd: fwd, timeout: 4 * time.Second, base: context.Background()}
}

// ServeDNS implements [mdns.Handler].
func (h *Handler) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	local := addrOf(w.LocalAddr())
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	m := h.respond(h.base, h.zone(), local, r, udp)
	if m != nil {
		w.WriteMsg(m)
	}
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// respond computes the answer to r arriving on local, from z. It returns
// nil when nothing must be sent (r is itself a response).
func (h *Handler) respond(ctx context.Context, z *Zone, local netip.Addr, r *mdns.Msg, udp bool) *mdns.Msg {
	m, fwd := h.local(z, local, r, udp)
	if fwd {
		return h.forward(ctx, r, m, udp)
	}
	return m
}

// local answers r without the upstream where it can; forward reports that
// r is not cilo's to answer, and m is then the reply to fill in. An answer
// from local depends only on the request bytes, the local address and z,
// so the server caches it packed for the life of z.
func (h *Handler) local(z *Zone, local netip.Addr, r *mdns.Msg, udp bool) (m *mdns.Msg, forward bool) {
	if r.Response {
		return nil, false
	}
	m = new(mdns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	m.Authoritative = false
	reqOpt := r.IsEdns0()
	if reqOpt != nil {
		m.SetEdns0(udpSize, false)
		if reqOpt.Version() != 0 {
			m.Rcode = mdns.RcodeBadVers
			m.Question = nil
			return m, false
		}
	}
	if r.Opcode != mdns.OpcodeQuery {
		m.Rcode = mdns.RcodeNotImplemented
		return m, false
	}
	if len(r.Question) != 1 || len(r.Answer) != 0 || len(r.Ns) != 0 {
		m.Rcode = mdns.RcodeFormatError
		return m, false
	}
	q := r.Question[0]
	qname := strings.ToLower(q.Name)
	view := z.View(local)
	ours := mdns.IsSubDomain(z.suffix, qname)
	var node *Node
	res := NXDomain
	if ours || view != nil {
		node, res = z.Lookup(view, qname)
	}
	if !ours && res != Found {
		return m, true
	}
	m.Authoritative = true
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		m.Rcode = mdns.RcodeRefused
		m.Authoritative = false
		return m, false
	}
	switch {
	case res == NXDomain:
		m.Rcode = mdns.RcodeNameError
		m.Ns = []mdns.RR{z.soa}
	case res == Found && (q.Qtype == mdns.TypeA || q.Qtype == mdns.TypeANY):
		for _, a := range node.Addrs {
			if !a.Is4() {
				continue
			}
			m.Answer = append(m.Answer, &mdns.A{
				Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: TTL},
				A:   a.AsSlice(),
			})
		}
	case qname == z.suffix && q.Qtype == mdns.TypeSOA:
		m.Answer = []mdns.RR{z.soa}
	}
	if len(m.Answer) == 0 && m.Rcode == mdns.RcodeSuccess && ours {
		m.Ns = []mdns.RR{z.soa} // NODATA: the SOA tells resolvers how long to cache it
	}
	if udp {
		m.Truncate(clientSize(r))
	}
	return m, false
}

// clientSize is the largest UDP answer the client accepts.
func clientSize(r *mdns.Msg) int {
	size := mdns.MinMsgSize
	if o := r.IsEdns0(); o != nil && int(o.UDPSize()) > size {
		size = int(o.UDPSize())
	}
	return min(size, udpSize)
}

// forward sends r upstream and turns the reply, or the failure, into the
// reply to the client.
func (h *Handler) forward(ctx context.Context, r, m *mdns.Msg, udp bool) *mdns.Msg {
	if h.fwd == nil {
		m.Rcode = mdns.RcodeServerFailure
		return m
	}
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	up, err := h.fwd.Exchange(ctx, r)
	if err != nil || up == nil {
		m.Rcode = mdns.RcodeServerFailure
		return m
	}
	up.Id = r.Id
	up.Question = r.Question // the client's spelling (0x20)
	up.Authoritative = false
	up.RecursionAvailable = true
	if r.IsEdns0() == nil {
		stripOpt(up)
	}
	if udp {
		up.Truncate(clientSize(r))
	}
	return up
}

func stripOpt(m *mdns.Msg) {
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != mdns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
}
