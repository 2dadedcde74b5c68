package dns

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// ErrNoUpstream is returned by [Forwarder.Exchange] when no upstream
// resolver is known.
var ErrNoUpstream = errors.New("no upstream resolver")

const (
	fwdCacheSize = 4096
	fwdMaxTTL    = 300 * time.Second
	fwdNegTTL    = 30 * time.Second
)

// Forwarder sends queries for names that are not cilo's to the host's
// upstream resolvers, in order, and keeps a small cache of their answers
// (bounded, TTL-respecting). It is safe for concurrent use.
type Forwarder struct {
	upstreams func() []string
	timeout   time.Duration
	now       func() time.Time

	mu    sync.Mutex
	cache map[fwdKey]fwdEntry
}

type fwdKey struct {
	name          string
	qtype, qclass uint16
	do, cd, edns  bool
}

type fwdEntry struct {
	msg     *mdns.Msg
	stored  time.Time
	expires time.Time
}

// NewForwarder returns a forwarder asking the upstreams (host:port) that
// upstreams returns at the time of each query; each attempt gets timeout.
func NewForwarder(upstreams func() []string, timeout time.Duration) *Forwarder {
	return &Forwarder{upstreams: upstreams, timeout: timeout, now: time.Now, cache: map[fwdKey]fwdEntry{}}
}

// Exchange implements [Exchanger]: the cached answer when there is a fresh
// one, else the first upstream's answer that is not SERVFAIL or REFUSED.
// A UDP answer with TC set is asked again over TCP.
func (f *Forwarder) Exchange(ctx context.Context, r *mdns.Msg) (*mdns.Msg, error) {
	if len(r.Question) != 1 {
		return nil, fmt.Errorf("forward: %d questions", len(r.Question))
	}
	q := r.Question[0]
	key := fwdKey{name: strings.ToLower(q.Name), qtype: q.Qtype, qclass: q.Qclass, cd: r.CheckingDisabled}
	if o := r.IsEdns0(); o != nil {
		key.edns, key.do = true, o.Do()
	}
	if m := f.cached(key); m != nil {
		return m, nil
	}
	ups := f.upstreams()
	if len(ups) == 0 {
		return nil, ErrNoUpstream
	}
	req := r.Copy()
	var errs []error
	for _, up := range ups {
		m, err := f.exchange(ctx, req, up)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if m.Rcode == mdns.RcodeServerFailure || m.Rcode == mdns.RcodeRefused {
			errs = append(errs, fmt.Errorf("upstream %s: %s", up, mdns.RcodeToString[m.Rcode]))
			continue
		}
		f.store(key, m)
		return m, nil
	}
	return nil, fmt.Errorf("forward %s: %w", q.Name, errors.Join(errs...))
}

func (f *Forwarder) exchange(ctx context.Context, req *mdns.Msg, up string) (*mdns.Msg, error) {
	req.Id = mdns.Id()
	c := &mdns.Client{Net: "udp", Timeout: f.timeout, UDPSize: udpSize}
	m, _, err := c.ExchangeContext(ctx, req, up)
	if err == nil && m.Truncated {
		c.Net = "tcp"
		m, _, err = c.ExchangeContext(ctx, req, up)
	}
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", up, err)
	}
	return m, nil
}

func (f *Forwarder) cached(k fwdKey) *mdns.Msg {
	f.mu.Lock()
	e, ok := f.cache[k]
	f.mu.Unlock()
	now := f.now()
	if !ok || !now.Before(e.expires) {
		return nil
	}
	m := e.msg.Copy()
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, s := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range s {
			if h := rr.Header(); h.Rrtype != mdns.TypeOPT {
				h.Ttl -= min(age, h.Ttl)
			}
		}
	}
	return m
}

// store caches m for the smallest TTL in it (the SOA's minimum for a
// negative answer), within bounds. When the cache is full an arbitrary
// tenth of it is dropped (map order is random).
func (f *Forwarder) store(k fwdKey, m *mdns.Msg) {
	if m.Truncated || (m.Rcode != mdns.RcodeSuccess && m.Rcode != mdns.RcodeNameError) {
		return
	}
	ttl := fwdMaxTTL
	if len(m.Answer) == 0 {
		ttl = fwdNegTTL
	}
	for _, s := range [][]mdns.RR{m.Answer, m.Ns} {
		for _, rr := range s {
			t := time.Duration(rr.Header().Ttl) * time.Second
			if soa, ok := rr.(*mdns.SOA); ok && len(m.Answer) == 0 {
				t = min(t, time.Duration(soa.Minttl)*time.Second)
			}
			ttl = min(ttl, t)
		}
	}
	if ttl <= 0 {
		return
	}
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.cache) >= fwdCacheSize {
		n := 0
		for key := range f.cache {
			delete(f.cache, key)
			if n++; n >= fwdCacheSize/10 {
				break
			}
		}
	}
	f.cache[k] = fwdEntry{msg: m.Copy(), stored: now, expires: now.Add(ttl)}
}
