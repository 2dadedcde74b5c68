package dns

import (
	"net/netip"
	"slices"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// testZone: shop/dev (first created) and blog/dev share the env name dev;
// shop/dev labels its ingress, blog/dev has a conventional "web".
func testZone() *Zone {
	shopWeb := svc("front", "10.250.1.10")
	shopWeb.Ingress = true
	shopDB := svc("db", "10.250.1.11")
	shopDB.Hostnames = []string{"postgres", "pg.dev.test"}
	many := svc("many")
	for i := 0; i < 100; i++ {
		many.Addrs = append(many.Addrs, netip.AddrFrom4([4]byte{10, 250, 1, byte(100 + i)}))
	}
	blog := testEnv("blog", "dev", 2, svc("web", "10.250.2.10"), svc("db", "10.250.2.11"), svc("cache"))
	stopped := testEnv("shop", "old", 3, svc("db", "10.250.3.11"))
	stopped.Status = state.StatusStopped
	creating := testEnv("shop", "new", 4, svc("db", "10.250.4.11"))
	creating.Status = state.StatusCreating
	plain := testEnv("api", "ci", 5, svc("db", "10.250.5.11"))
	return NewZone("test", []*state.Env{
		testEnv("shop", "dev", 1, shopWeb, shopDB, svc("api", "10.250.1.12"), many),
		blog, stopped, creating, plain,
	}, 7)
}

var (
	host     = netip.Addr{}
	shopView = netip.MustParseAddr("10.250.1.1")
	blogView = netip.MustParseAddr("10.250.2.1")
)

func TestAnswers(t *testing.T) {
	fwd := &fakeExchanger{}
	z := testZone()
	h := NewHandler(func() *Zone { return z }, fwd)
	tests := []struct {
		name  string
		view  netip.Addr
		qname string
		qtype uint16
		rcode int
		addrs []string // nil: no answer
	}{
		{"service_short", host, "db.dev.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"service_canonical", host, "db.dev.shop.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"other_project_canonical", host, "db.dev.blog.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.2.11"}},
		{"case_insensitive", host, "DB.Dev.SHOP.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"apex_labelled_ingress", host, "shop.dev.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.10"}},
		{"apex_conventional_web", host, "blog.dev.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.2.10"}},
		{"apex_env_ip_without_ingress", host, "api.ci.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.5.2"}},
		{"apex_canonical", host, "dev.shop.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.10"}},
		{"wildcard_below_apex", host, "a.b.shop.dev.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.10"}},
		{"wildcard_below_canonical_apex", host, "admin.dev.blog.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.2.10"}},
		{"hostname_label", host, "postgres.dev.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"hostname_label_given_in_full", host, "pg.dev.shop.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"stopped_env_served", host, "db.old.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.3.11"}},
		{"creating_env_not_served", host, "db.new.test", mdns.TypeA, mdns.RcodeNameError, nil},
		{"aaaa_nodata", host, "db.dev.test", mdns.TypeAAAA, mdns.RcodeSuccess, nil},
		{"aaaa_nodata_wildcard", host, "x.shop.dev.test", mdns.TypeAAAA, mdns.RcodeSuccess, nil},
		{"service_without_addrs_nodata", host, "cache.dev.blog.test", mdns.TypeA, mdns.RcodeSuccess, nil},
		{"empty_non_terminal_nodata", host, "dev.test", mdns.TypeA, mdns.RcodeSuccess, nil},
		{"unknown_nxdomain", host, "nope.dev.test", mdns.TypeA, mdns.RcodeNameError, nil},
		{"unknown_env_nxdomain", host, "db.nope.test", mdns.TypeA, mdns.RcodeNameError, nil},
		// dev is ambiguous: shop/dev was created first, so it owns the
		// short names both envs claim; blog's own apex is unambiguous.
		{"ambiguous_short_first_created_wins", host, "db.dev.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"ambiguous_short_only_one_claims", host, "cache.dev.test", mdns.TypeA, mdns.RcodeSuccess, nil},
		{"ambiguous_from_inside_own_env_wins", blogView, "db.dev.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.2.11"}},
		{"canonical_from_inside_other_env", blogView, "db.dev.shop.test", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"bare_service_inside_env", blogView, "db", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.2.11"}},
		{"bare_service_inside_other_env", shopView, "DB", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"bare_project_is_apex", shopView, "shop", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.10"}},
		{"bare_hostname_inside_env", shopView, "postgres", mdns.TypeA, mdns.RcodeSuccess, []string{"10.250.1.11"}},
		{"bare_aaaa_nodata", shopView, "db", mdns.TypeAAAA, mdns.RcodeSuccess, nil},
		{"forwarded_outside_name", host, "example.org", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.1"}},
		{"bare_unknown_forwarded_inside_env", shopView, "localdomain", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.1"}},
		{"bare_name_not_answered_on_host", host, "db", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := ask(h, tt.view, question(tt.qname, tt.qtype), true)
			if m.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s\n%v", mdns.RcodeToString[m.Rcode], mdns.RcodeToString[tt.rcode], m)
			}
			if got := addrsOf(m); !slices.Equal(got, tt.addrs) {
				t.Fatalf("answer %v, want %v", got, tt.addrs)
			}
			ours := mdns.IsSubDomain("test.", mdns.Fqdn(tt.qname))
			if ours {
				if !m.Authoritative {
					t.Errorf("answer for %s not authoritative", tt.qname)
				}
				if len(m.Answer) == 0 && (len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != mdns.TypeSOA) {
					t.Errorf("negative answer without SOA: %v", m.Ns)
				}
				for _, rr := range m.Answer {
					if rr.Header().Ttl != TTL || rr.Header().Name != mdns.Fqdn(tt.qname) {
						t.Errorf("record %v: want TTL %d and the question's name", rr, TTL)
					}
				}
			}
		})
	}
	for _, name := range fwd.forwarded() {
		if mdns.IsSubDomain("test.", name) {
			t.Errorf("%s was forwarded", name)
		}
	}
}

func TestContested(t *testing.T) {
	want := []string{"db.dev.test.", "web.dev.test."}
	z := NewZone("test", []*state.Env{
		testEnv("shop", "dev", 1, svc("db", "10.250.1.11"), svc("web", "10.250.1.10"), svc("api", "10.250.1.12")),
		testEnv("blog", "dev", 2, svc("db", "10.250.2.11"), svc("web", "10.250.2.10")),
		testEnv("wiki", "dev", 3, svc("db", "10.250.3.11")),
	}, 1)
	if got := z.Contested(); !slices.Equal(got, want) {
		t.Fatalf("contested %v, want %v", got, want)
	}
}

func TestIngressSelection(t *testing.T) {
	labelled := func(s state.Service) state.Service { s.Ingress = true; return s }
	tests := []struct {
		name string
		svcs []state.Service
		want []string
	}{
		{"labelled_beats_conventional", []state.Service{svc("web", "10.0.0.10"), labelled(svc("edge", "10.0.0.11"))}, []string{"10.0.0.11"}},
		{"labelled_without_addrs_skipped", []state.Service{svc("web", "10.0.0.10"), labelled(svc("edge"))}, []string{"10.0.0.10"}},
		{"web_before_app", []state.Service{svc("app", "10.0.0.12"), svc("web", "10.0.0.10")}, []string{"10.0.0.10"}},
		{"app_before_frontend", []state.Service{svc("frontend", "10.0.0.13"), svc("app", "10.0.0.12")}, []string{"10.0.0.12"}},
		{"frontend_before_nginx", []state.Service{svc("nginx", "10.0.0.14"), svc("frontend", "10.0.0.13")}, []string{"10.0.0.13"}},
		{"nginx", []state.Service{svc("db", "10.0.0.15"), svc("nginx", "10.0.0.14")}, []string{"10.0.0.14"}},
		{"env_address", []state.Service{svc("db", "10.0.0.15")}, []string{"10.250.9.2"}},
		{"replicas", []state.Service{svc("web", "10.0.0.10", "10.0.0.20")}, []string{"10.0.0.10", "10.0.0.20"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := NewZone("test", []*state.Env{testEnv("p", "e", 9, tt.svcs...)}, 1)
			h := NewHandler(func() *Zone { return z }, nil)
			for _, name := range []string{"p.e.test", "e.p.test", "x.p.e.test"} {
				if got := addrsOf(ask(h, host, question(name, mdns.TypeA), true)); !slices.Equal(got, tt.want) {
					t.Errorf("%s: %v, want %v", name, got, tt.want)
				}
			}
		})
	}
}

// TestOneNameOneEnv checks, for a zone full of colliding names, that every
// name answers with the addresses of one env only, from every view.
func TestOneNameOneEnv(t *testing.T) {
	var envs []*state.Env
	// Project and env names crossed over, so short and canonical forms collide.
	for i, pe := range [][2]string{{"shop", "dev"}, {"dev", "shop"}, {"blog", "dev"}, {"dev", "blog"}, {"shop", "db"}} {
		envs = append(envs, testEnv(pe[0], pe[1], i+1,
			svc("db", netip.AddrFrom4([4]byte{10, 250, byte(i + 1), 11}).String()),
			svc("shop", netip.AddrFrom4([4]byte{10, 250, byte(i + 1), 12}).String())))
	}
	z := NewZone("test", envs, 1)
	views := []*View{nil}
	for _, v := range z.Views() {
		views = append(views, v)
	}
	names := map[string]bool{}
	for n := range z.names {
		names[n] = true
	}
	for _, v := range views {
		for _, v2 := range views {
			if v2 != nil {
				for n := range v2.names {
					names[n] = true
				}
			}
		}
		for n := range names {
			node, res := z.Lookup(v, n)
			if res != Found {
				continue
			}
			subnet := map[byte]bool{}
			for _, a := range node.Addrs {
				subnet[a.As4()[2]] = true
			}
			if len(subnet) != 1 {
				t.Errorf("%s answers with addresses of %d envs", n, len(subnet))
			}
		}
	}
	// Canonical names always answer with their own env.
	for _, e := range envs {
		n, _ := z.Lookup(nil, "db."+e.Name+"."+e.Project+".test.")
		if n == nil || n.Env != e.Key() {
			t.Errorf("canonical db of %s answers %v", e.Key(), n)
		}
	}
}

func TestProtocol(t *testing.T) {
	z := testZone()
	fwd := &fakeExchanger{}
	h := NewHandler(func() *Zone { return z }, fwd)

	t.Run("soa_at_suffix", func(t *testing.T) {
		m := ask(h, host, question("test", mdns.TypeSOA), true)
		if len(m.Answer) != 1 || m.Answer[0].(*mdns.SOA).Serial != 7 {
			t.Fatalf("SOA answer %v", m.Answer)
		}
	})
	t.Run("edns_echoed", func(t *testing.T) {
		q := question("db.dev.test", mdns.TypeA)
		q.SetEdns0(4096, true)
		m := ask(h, host, q, true)
		if o := m.IsEdns0(); o == nil || o.UDPSize() != udpSize {
			t.Fatalf("OPT %v, want size %d", o, udpSize)
		}
	})
	t.Run("edns_version_badvers", func(t *testing.T) {
		q := question("db.dev.test", mdns.TypeA)
		q.SetEdns0(4096, false)
		q.IsEdns0().SetVersion(1)
		m := ask(h, host, q, true)
		if m.Rcode != mdns.RcodeBadVers {
			t.Fatalf("rcode %s, want BADVERS", mdns.RcodeToString[m.Rcode])
		}
	})
	t.Run("udp_truncated_tcp_complete", func(t *testing.T) {
		m := ask(h, host, question("many.dev.shop.test", mdns.TypeA), true)
		b, _ := m.Pack()
		if !m.Truncated || len(b) > 512 {
			t.Fatalf("UDP answer of 100 records: TC=%v, %d bytes", m.Truncated, len(b))
		}
		q := question("many.dev.shop.test", mdns.TypeA)
		q.SetEdns0(1232, false)
		if m := ask(h, host, q, true); !m.Truncated {
			t.Fatalf("UDP answer of 100 records over 1232 bytes not truncated")
		}
		if m := ask(h, host, question("many.dev.shop.test", mdns.TypeA), false); m.Truncated || len(m.Answer) != 100 {
			t.Fatalf("TCP answer: TC=%v, %d records", m.Truncated, len(m.Answer))
		}
	})
	t.Run("chaos_class_refused", func(t *testing.T) {
		q := question("db.dev.test", mdns.TypeTXT)
		q.Question[0].Qclass = mdns.ClassCHAOS
		if m := ask(h, host, q, true); m.Rcode != mdns.RcodeRefused {
			t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
		}
	})
	t.Run("notify_not_implemented", func(t *testing.T) {
		q := question("test", mdns.TypeSOA)
		q.Opcode = mdns.OpcodeNotify
		if m := ask(h, host, q, true); m.Rcode != mdns.RcodeNotImplemented {
			t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
		}
	})
	t.Run("two_questions_formerr", func(t *testing.T) {
		q := question("db.dev.test", mdns.TypeA)
		q.Question = append(q.Question, q.Question[0])
		if m := ask(h, host, q, true); m.Rcode != mdns.RcodeFormatError {
			t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
		}
	})
	t.Run("response_not_answered", func(t *testing.T) {
		q := question("db.dev.test", mdns.TypeA)
		q.Response = true
		if m := ask(h, host, q, true); m != nil {
			t.Fatalf("answered a response: %v", m)
		}
	})
	t.Run("upstream_failure_servfail", func(t *testing.T) {
		h := NewHandler(func() *Zone { return z }, &fakeExchanger{fail: true})
		if m := ask(h, host, question("example.org", mdns.TypeA), true); m.Rcode != mdns.RcodeServerFailure {
			t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
		}
	})
}

func TestResolvConf(t *testing.T) {
	e := testEnv("shop", "dev", 1)
	got := string(ResolvConf(e, ".test."))
	want := "# cilo: env dev of project shop; names under .test answered by cilo on the gateway\n" +
		"nameserver 10.250.1.1\nsearch dev.test\noptions ndots:1 timeout:2 attempts:2\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
