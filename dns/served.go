package dns

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// WaitServed waits until the server at addr answers with env as recorded
// now. A change to the state is served after the server's next reload,
// which a burst of writes can delay by up to the settle time; a command
// started right after `cilo create` or `cilo up` must already find the
// names. It asks for one name of env (a service's, else the apex) until
// the answer holds the recorded address, and gives up when ctx is done.
func WaitServed(ctx context.Context, addr, suffix string, env *state.Env) error {
	name, want := servedProbe(env, suffix)
	q := new(mdns.Msg)
	q.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	c := &mdns.Client{Net: "udp", Timeout: 100 * time.Millisecond}
	for {
		r, _, err := c.ExchangeContext(ctx, q, addr)
		if err == nil && answers(r, want) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dns server at %s does not answer %s with %s yet: %w", addr, name, want, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// servedProbe is a canonical name the zone gives env and an address it
// answers with: the first service (by name) with an address, else the
// apex.
func servedProbe(env *state.Env, suffix string) (string, netip.Addr) {
	canon := strings.ToLower(env.Name) + "." + strings.ToLower(env.Project) + "." + suffix
	svcs := slices.Clone(env.Services)
	slices.SortFunc(svcs, func(a, b state.Service) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range svcs {
		if name := strings.ToLower(s.Name); len(s.Addrs) > 0 && validRelative(name) {
			return name + "." + canon, s.Addrs[0]
		}
	}
	var want netip.Addr
	if addrs := apexAddrs(env); len(addrs) > 0 {
		want = addrs[0]
	}
	return canon, want
}

func answers(r *mdns.Msg, want netip.Addr) bool {
	if r.Rcode != mdns.RcodeSuccess {
		return false
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok && ip == want {
				return true
			}
		}
	}
	return false
}
