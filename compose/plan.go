package compose

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/cilo-dev/cilo/compose/supervise"
	"github.com/cilo-dev/cilo/nsnet"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// firstHost is the host number of the first service address in an env's
// /24 (.1 is the gateway, .2 the env itself).
const firstHost = 10

// replica is one container of one service in one env.
type replica struct {
	service string
	number  int // 1-based, as com.docker.compose.container-number
	id      string
	netns   string
	veth    string
	addr    netip.Addr
}

// plan is what Up will create for one env, computed before anything is
// touched so that bad input fails with nothing half-started.
type plan struct {
	project  *types.Project
	env      *state.Env
	replicas map[string][]replica // by service
	forwards []nsnet.PortForward
	services []state.Service
	policies map[string]supervise.Policy // restart policies, by service
	restarts bool                        // some service has a policy but "no"
}

// replicasOf is how many containers a service runs.
func replicasOf(s types.ServiceConfig) int {
	if s.Deploy != nil && s.Deploy.Replicas != nil {
		return *s.Deploy.Replicas
	}
	if s.Scale != nil {
		return *s.Scale
	}
	return 1
}

// makePlan assigns every replica its names and stable address (services
// sorted by name, replicas in order, from .10 up) and collects the port
// forwards, refusing a port published twice.
func makePlan(p *types.Project, env *state.Env, pool nsnet.Pool, prefix, suffix string) (*plan, error) {
	pl := &plan{project: p, env: env, replicas: map[string][]replica{}, policies: map[string]supervise.Policy{}}
	host := firstHost
	names := p.ServiceNames()
	sort.Strings(names)
	owner := map[string]string{}
	for _, name := range names {
		s := p.Services[name]
		n := replicasOf(s)
		svc := state.Service{Name: name}
		pol, err := supervise.ParsePolicy(restartOf(s))
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", name, err)
		}
		pl.policies[name] = pol
		pl.restarts = pl.restarts || (pol.Mode != supervise.No && n > 0)
		for i := 1; i <= n; i++ {
			if host > 254 {
				return nil, fmt.Errorf("env %q: more than %d service containers do not fit in its /24", env.Name, 254-firstHost+1)
			}
			r := replica{
				service: name,
				number:  i,
				id:      containerID(p.Name, env.Name, name, i),
				netns:   netnsName(prefix, p.Name, env.Name, name, i),
				veth:    fmt.Sprintf("%ss%dx%d", prefix, env.Index, host),
				addr:    pool.Host(env.Index, host),
			}
			host++
			pl.replicas[name] = append(pl.replicas[name], r)
			svc.Addrs = append(svc.Addrs, r.addr)
		}
		for _, port := range s.Ports {
			if port.Published == "" {
				continue
			}
			pub, err := strconv.ParseUint(port.Published, 10, 16)
			if err != nil || pub == 0 {
				return nil, fmt.Errorf("service %q: published port %q is not a port number", name, port.Published)
			}
			proto := port.Protocol
			if proto == "" {
				proto = "tcp"
			}
			key := fmt.Sprintf("%d/%s", pub, proto)
			if prev, ok := owner[key]; ok {
				return nil, fmt.Errorf("port %s is published twice in env %q (by service %q and %q): %w", key, env.Name, prev, name, nsnet.ErrPortConflict)
			}
			owner[key] = name
			if n > 1 {
				return nil, fmt.Errorf("service %q publishes port %s but runs %d replicas: one localhost port cannot reach several (%w)", name, key, n, nsnet.ErrPortConflict)
			}
			if n == 0 {
				continue
			}
			pl.forwards = append(pl.forwards, nsnet.PortForward{Protocol: proto, Port: uint16(pub),
				To: netip.AddrPortFrom(pl.replicas[name][0].addr, uint16(port.Target))})
			svc.Ports = append(svc.Ports, state.Port{Protocol: proto, Published: uint16(pub), Target: uint16(port.Target)})
		}
		if v, ok := s.Labels["cilo.ingress"]; ok && (v == "true" || v == "1" || v == "yes") {
			svc.Ingress = true
		}
		if v := s.Labels["cilo.hostnames"]; v != "" {
			for _, h := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
				svc.Hostnames = append(svc.Hostnames, h)
			}
		}
		pl.services = append(pl.services, svc)
	}
	if err := nsnet.CheckPortForwards(pl.forwards); err != nil {
		return nil, fmt.Errorf("env %q: %w", env.Name, err)
	}
	return pl, nil
}

var nonAlnum = regexp.MustCompile(`[^A-Za-z0-9]+`)

// idPart makes s safe between containerd's separators: runs of anything
// but letters and digits become one "-", none at either end.
func idPart(s string) string {
	s = strings.Trim(nonAlnum.ReplaceAllString(s, "-"), "-")
	if s == "" {
		return "x"
	}
	return s
}

// containerID names a replica's container, <project>_<env>_<service>_<n>
// when that is a valid containerd identifier of at most 76 characters;
// otherwise the readable part is shortened or cleaned and a hash of the
// real names keeps it unique.
func containerID(project, env, service string, n int) string {
	raw := fmt.Sprintf("%s_%s_%s_%d", project, env, service, n)
	id := fmt.Sprintf("%s_%s_%s_%d", idPart(project), idPart(env), idPart(service), n)
	return shorten(id, raw, 76)
}

// netnsName names a replica's network namespace (a file name under
// /run/netns, so at most 200 bytes here).
func netnsName(prefix, project, env, service string, n int) string {
	raw := fmt.Sprintf("%s-%s-%s-%s-%d", prefix, project, env, service, n)
	name := fmt.Sprintf("%s-%s-%s-%s-%d", prefix, idPart(project), idPart(env), idPart(service), n)
	return shorten(name, raw, 200)
}

// shorten returns name if it is raw unchanged and fits max; else a prefix
// of name plus a hash of raw.
func shorten(name, raw string, max int) string {
	if name == raw && len(name) <= max {
		return name
	}
	h := sha256.Sum256([]byte(raw))
	sum := hex.EncodeToString(h[:6])
	if len(name) > max-len(sum)-1 {
		name = strings.TrimRight(name[:max-len(sum)-1], "_.-")
	}
	return name + "-" + sum
}

// hostsFile is a replica's /etc/hosts: itself, every service of the env by
// bare name and by full name, and the service's extra_hosts.
func (pl *plan) hostsFile(r replica, suffix string) []byte {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	names := make([]string, 0, len(pl.replicas))
	for n := range pl.replicas {
		names = append(names, n)
	}
	sort.Strings(names)
	env, project := pl.env.Name, pl.project.Name
	for _, n := range names {
		for _, o := range pl.replicas[n] {
			hosts := []string{}
			if o.number == 1 {
				hosts = append(hosts, n)
				if suffix != "" {
					hosts = append(hosts, n+"."+env+"."+suffix, n+"."+env+"."+pl.env.Project+"."+suffix)
				}
			}
			hosts = append(hosts, fmt.Sprintf("%s-%s-%d", project, n, o.number), fmt.Sprintf("%s_%s_%d", project, n, o.number))
			if o.id == r.id {
				hosts = append(hosts, hostnameOf(pl.project.Services[n]))
			}
			fmt.Fprintf(&b, "%s\t%s\n", o.addr, strings.Join(dedupe(hosts), " "))
		}
	}
	for _, s := range pl.services {
		if len(s.Hostnames) > 0 && len(s.Addrs) > 0 {
			fmt.Fprintf(&b, "%s\t%s\n", s.Addrs[0], strings.Join(s.Hostnames, " "))
		}
	}
	extra := pl.project.Services[r.service].ExtraHosts
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, h := range keys {
		for _, ip := range extra[h] {
			fmt.Fprintf(&b, "%s\t%s\n", ip, h)
		}
	}
	return []byte(b.String())
}

// resolvConf points a replica at the env's DNS server on the gateway.
func (pl *plan) resolvConf(suffix string) []byte {
	s := fmt.Sprintf("nameserver %s\n", pl.env.Gateway)
	if suffix != "" {
		s += fmt.Sprintf("search %s.%s\n", pl.env.Name, suffix)
	}
	return []byte(s + "options ndots:1\n")
}

func hostnameOf(s types.ServiceConfig) string {
	if s.Hostname != "" {
		return s.Hostname
	}
	return s.Name
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// restartOf is the service's restart policy as docker compose reads it:
// restart:, else deploy.restart_policy (condition any, the default, is
// always; none is no; on-failure keeps max_attempts).
func restartOf(s types.ServiceConfig) string {
	if s.Restart != "" || s.Deploy == nil || s.Deploy.RestartPolicy == nil {
		return s.Restart
	}
	r := s.Deploy.RestartPolicy
	switch r.Condition {
	case "none":
		return "no"
	case "on-failure":
		if r.MaxAttempts != nil {
			return fmt.Sprintf("on-failure:%d", *r.MaxAttempts)
		}
		return "on-failure"
	case "", "any":
		return "always"
	}
	return r.Condition // refused by ParsePolicy, naming it
}
