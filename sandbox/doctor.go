package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilo-dev/cilo/nsnet"
	"github.com/cilo-dev/cilo/nsnet/nsfs"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// Finding is one thing doctor checked.
type Finding struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
	Fixed  bool   `json:"fixed,omitempty"`
}

// Doctor checks the host and cilo's own objects against the state: it
// finds interrupted operations and kernel objects that no env owns. With
// fix it finishes or undoes what was interrupted and removes the orphans.
// It only ever touches objects named with this configuration's prefix.
func (m *Manager) Doctor(ctx context.Context, fix bool) ([]Finding, error) {
	var out []Finding
	add := func(f Finding) { out = append(out, f) }

	if err := checkPrivilege(); err != nil {
		add(Finding{Check: "privilege", Detail: err.Error()})
		return out, nil
	}
	add(Finding{Check: "privilege", OK: true, Detail: "CAP_NET_ADMIN and CAP_SYS_ADMIN"})
	add(kernelFinding())

	st, err := m.store.Read(ctx)
	if err != nil {
		add(Finding{Check: "state", Detail: err.Error()})
		return out, nil
	}
	add(Finding{Check: "state", OK: true, Detail: fmt.Sprintf("%s, %d envs", m.store.Dir(), len(st.Envs))})

	if len(st.Envs) > 0 {
		ok, err := m.net.HostRulesInstalled()
		f := Finding{Check: "host networking", OK: ok && err == nil, Detail: "nftables table " + m.cfg.Prefix + " and unreachable route for " + m.cfg.Pool.String()}
		if !f.OK && fix {
			f.Fixed = m.net.EnsureHost(ctx) == nil
		}
		add(f)
	}

	if len(st.Envs) > 0 && m.dns != nil {
		add(m.checkDNS(ctx, fix))
	}

	envs := make([]*state.Env, 0, len(st.Envs))
	for _, e := range st.Envs {
		envs = append(envs, e)
	}
	sortEnvs(envs)
	for _, e := range envs {
		add(m.checkEnv(ctx, e, fix))
	}
	if len(st.Envs) > 0 && m.ws != nil {
		add(m.checkBases(ctx, fix))
	}
	add(m.checkClaims(ctx, fix))
	orphans, err := m.orphans(envs)
	if err != nil {
		add(Finding{Check: "orphans", Detail: err.Error()})
		return out, nil
	}
	for _, o := range orphans {
		f := Finding{Check: "orphan " + o.kind, Detail: o.name + " belongs to no env"}
		if fix {
			f.Fixed = o.remove() == nil
		}
		add(f)
	}
	if len(orphans) == 0 {
		add(Finding{Check: "orphans", OK: true, Detail: "no namespace or interface without an env"})
	}
	return out, nil
}

// checkDNS finds a DNS server that is down: envs keep working, but their
// names stop resolving. The fix starts it, as create would.
func (m *Manager) checkDNS(ctx context.Context, fix bool) Finding {
	f := Finding{Check: "dns server"}
	detail, err := m.dns.Health(ctx)
	if err == nil {
		f.OK, f.Detail = true, detail
		return f
	}
	f.Detail = fmt.Sprintf("%v: env names do not resolve (cilo doctor --fix or cilo create starts it)", err)
	if fix {
		f.Fixed = m.dns.EnsureRunning(ctx) == nil
	}
	return f
}

// unflushedGrace is how long after its Create a workspace base may still
// be waiting for its flush: seconds for the largest trees; past it, the
// flush was lost.
const unflushedGrace = time.Minute

// checkBases finds workspace bases whose flush after the create was lost
// (the watcher or syncer meant to do it died): until they are flushed, a
// crash would leave their envs unusable. The fix flushes them.
func (m *Manager) checkBases(ctx context.Context, fix bool) Finding {
	f := Finding{Check: "workspace bases"}
	ids, err := m.ws.Unflushed(ctx, unflushedGrace)
	switch {
	case err != nil:
		f.Detail = err.Error()
		return f
	case len(ids) == 0:
		f.OK, f.Detail = true, "on disk"
		return f
	}
	f.Detail = fmt.Sprintf("%v not flushed to disk since their create (the flush was lost): a crash now would leave their envs unusable (cilo doctor --fix flushes them)", ids)
	if fix {
		var errs []error
		for _, id := range ids {
			errs = append(errs, m.ws.Flush(ctx, id))
		}
		if err := errors.Join(errs...); err != nil {
			f.Detail += ": " + err.Error()
		} else {
			f.Fixed = true
		}
	}
	return f
}

// checkClaims finds pool indexes still claimed by an env that a crash
// removed only halfway.
func (m *Manager) checkClaims(ctx context.Context, fix bool) Finding {
	f := Finding{Check: "pool index claims"}
	stale, err := m.store.PruneClaims(ctx, fix)
	switch {
	case err != nil:
		f.Detail = err.Error()
	case len(stale) == 0:
		f.OK, f.Detail = true, "every claimed /24 belongs to an env"
	default:
		f.Detail = fmt.Sprintf("pool indexes %v are claimed by no env (left by an interrupted cilo)", stale)
		f.Fixed = fix
	}
	return f
}

func kernelFinding() Finding {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return Finding{Check: "kernel", Detail: err.Error()}
	}
	if !strings.Contains(string(b), "\toverlay\n") {
		return Finding{Check: "kernel", OK: true, Detail: "no overlayfs: workspaces fall back to copies (modprobe overlay)"}
	}
	return Finding{Check: "kernel", OK: true, Detail: "network namespaces, overlayfs"}
}

func (m *Manager) checkEnv(ctx context.Context, e *state.Env, fix bool) Finding {
	f := Finding{Check: "env " + e.Key()}
	switch {
	case e.Intent != nil && processAlive(e.Intent.PID):
		f.OK, f.Detail = true, fmt.Sprintf("%s in progress (pid %d)", e.Intent.Op, e.Intent.PID)
	case e.Intent != nil:
		f.Detail = fmt.Sprintf("interrupted %s (pid %d gone since %s)", e.Intent.Op, e.Intent.PID, e.Intent.Started.Format("15:04:05"))
		if fix {
			// Neither a half-made nor a half-removed env is worth
			// keeping: both are finished by removing everything.
			err := m.teardown(context.WithoutCancel(ctx), e)
			f.Fixed = err == nil
			if err != nil {
				f.Detail += ": " + err.Error()
			}
		}
	case !m.net.Exists(m.link(e)):
		f.Detail = "network missing (after a reboot): cilo up or cilo run restores it"
		if fix {
			f.Fixed = m.restore(ctx, e) == nil
		}
	default:
		f.OK, f.Detail = true, fmt.Sprintf("%s, %s, %s", e.Status, e.Subnet, e.WorkspaceMode)
	}
	return f
}

type orphan struct {
	kind, name string
	remove     func() error
}

// orphans are cilo-named namespaces and interfaces that no env in the
// state owns.
func (m *Manager) orphans(envs []*state.Env) ([]orphan, error) {
	indexes := map[int]bool{}
	for _, e := range envs {
		indexes[e.Index] = true
	}
	var out []orphan
	links, err := m.net.Links()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if i, ok := linkIndex(m.cfg.Prefix, l); ok && !indexes[i] {
			name := l
			out = append(out, orphan{"interface", name, func() error { return m.net.Detach(context.Background(), name) }})
		}
	}
	nses, err := nsnet.Netnses(m.cfg.Prefix + "-")
	if err != nil {
		return nil, err
	}
	for _, ns := range nses {
		owned := false
		for _, e := range envs {
			if ns == e.Netns || strings.HasPrefix(ns, e.Netns+"-") {
				owned = true
				break
			}
		}
		if !owned {
			name := ns
			out = append(out, orphan{"namespace", name, func() error { return nsfs.Delete(name) }})
		}
	}
	return out, nil
}

// linkIndex parses the env index out of <prefix>b<N>, <prefix>v<N> and
// <prefix>s<N>x<M>.
func linkIndex(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || len(rest) < 2 {
		return 0, false
	}
	rest = rest[1:]
	if i := strings.IndexByte(rest, 'x'); i >= 0 {
		rest = rest[:i]
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}
