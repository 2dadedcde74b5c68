// Package sandbox is cilo's environments: their names, their record in the
// state, their lifecycle (create, up, run, down, destroy) and running
// a process inside one. It ties together the kernel networking (nsnet), the
// workspaces (overlayfs), the compose services and the DNS server, each
// behind a small interface so that the lifecycle reads top-down.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cilo-dev/cilo/nsnet"
	"github.com/cilo-dev/cilo/nsnet/nsfs"
	"github.com/cilo-dev/cilo/overlayfs"
	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/enter"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// ErrExists is wrapped when creating an env that already exists.
var ErrExists = state.ErrExists

// ErrNotFound is wrapped when an env does not exist.
var ErrNotFound = state.ErrNotFound

// ErrPrivilege is wrapped when cilo lacks the capabilities it needs.
var ErrPrivilege = errors.New("insufficient privilege")

// Workspaces makes the env's copy of the source tree; *overlayfs.Manager is
// the implementation.
type Workspaces interface {
	Create(ctx context.Context, id, source string, o overlayfs.CreateOptions) (*overlayfs.Workspace, error)
	Ensure(ctx context.Context, id string) (*overlayfs.Workspace, error)
	Remove(ctx context.Context, id string) error
	Diff(ctx context.Context, id string) ([]overlayfs.Change, error)
	Patch(ctx context.Context, id string, w io.Writer) error
	Merge(ctx context.Context, id, branch string) error
	// Unflushed and Flush let doctor find and mend a base whose deferred
	// flush was lost.
	Unflushed(ctx context.Context, grace time.Duration) ([]string, error)
	Flush(ctx context.Context, base string) error
}

// Services runs an env's compose services; compose.Engine is the
// implementation. Up returns (nil, nil) when the workspace has no compose
// file.
type Services interface {
	Up(ctx context.Context, env *state.Env) ([]state.Service, error)
	Down(ctx context.Context, env *state.Env) error
	Remove(ctx context.Context, env *state.Env) error
}

// DNS is the embedded DNS server as the lifecycle sees it.
type DNS interface {
	// ResolvConf is the env's private /etc/resolv.conf.
	ResolvConf(env *state.Env) []byte
	// EnsureRunning starts the server in the background if it is not
	// running.
	EnsureRunning(ctx context.Context) error
	// WaitServed returns once the running server answers for env as it
	// is recorded now, or with an error when ctx is done first.
	WaitServed(ctx context.Context, env *state.Env) error
	// Health says whether the server runs and answers (for doctor): a
	// description when it does, an error saying what is wrong otherwise.
	Health(ctx context.Context) (string, error)
}

// Manager runs the lifecycle of environments.
type Manager struct {
	cfg   config.Config
	store *state.Store
	net   *nsnet.Network
	ws    Workspaces
	svc   Services
	dns   DNS
	logf  func(string, ...any)
}

// Opt configures a Manager.
type Opt func(*Manager)

// WithWorkspaces sets the workspace backend.
func WithWorkspaces(w Workspaces) Opt { return func(m *Manager) { m.ws = w } }

// WithServices sets the compose backend; without it envs have no services.
func WithServices(s Services) Opt { return func(m *Manager) { m.svc = s } }

// WithDNS sets the DNS server; without it envs resolve through the
// gateway's port 53 only if something else serves it.
func WithDNS(d DNS) Opt { return func(m *Manager) { m.dns = d } }

// WithLogf sets where warnings go.
func WithLogf(f func(string, ...any)) Opt { return func(m *Manager) { m.logf = f } }

// New returns a Manager for cfg. It touches nothing but the state
// directory.
func New(cfg config.Config, opts ...Opt) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	store, err := state.Open(cfg.StateDir)
	if err != nil {
		return nil, PrivilegeHint(err)
	}
	n, err := nsnet.New(cfg.Prefix, cfg.Pool)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, store: store, net: n, logf: func(string, ...any) {}}
	for _, o := range opts {
		o(m)
	}
	if m.ws == nil {
		ws, err := overlayfs.New(WorkspaceRoot(cfg), overlayfs.WithLogf(m.logf))
		if err != nil {
			return nil, PrivilegeHint(err)
		}
		m.ws = ws
	}
	return m, nil
}

// PrivilegeHint marks a permission error on cilo's own directories as a
// lack of privilege, with what to do about it.
func PrivilegeHint(err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w: %v: run it as root (sudo cilo ...)", ErrPrivilege, err)
	}
	return err
}

// Config is the manager's configuration.
func (m *Manager) Config() config.Config { return m.cfg }

// Store is the state store (the DNS server and doctor read it).
func (m *Manager) Store() *state.Store { return m.store }

// Network is the kernel networking of this configuration.
func (m *Manager) Network() *nsnet.Network { return m.net }

// Get returns the env name of project.
func (m *Manager) Get(ctx context.Context, project, name string) (*state.Env, error) {
	env, err := m.store.Get(ctx, state.Key(project, name))
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("env %q of project %s: %w (cilo list shows the envs)", name, project, ErrNotFound)
	}
	return env, err
}

// List returns the envs of project, or of every project when project is
// empty, in creation order.
func (m *Manager) List(ctx context.Context, project string) ([]*state.Env, error) {
	st, err := m.store.Read(ctx)
	if err != nil {
		return nil, err
	}
	var out []*state.Env
	for _, e := range st.Envs {
		if project == "" || e.Project == project {
			out = append(out, e)
		}
	}
	sortEnvs(out)
	return out, nil
}

// WorkspaceRoot is where the overlayfs manager keeps bases and workspaces.
func WorkspaceRoot(cfg config.Config) string { return filepath.Join(cfg.StateDir, "workspaces") }

// workspaceID names an env's workspace: "--" cannot occur in a normalised
// project name, so the split is unambiguous.
func (m *Manager) workspaceID(project, name string) string { return project + "--" + name }

func (m *Manager) netnsName(project, name string) string {
	return m.cfg.Prefix + "-" + project + "-" + name
}

func (m *Manager) link(env *state.Env) nsnet.Link { return m.net.Link(env.Index, env.Netns) }

// label marks kernel objects so that doctor can tell whose they are.
func (m *Manager) label(env *state.Env) string { return "cilo:" + env.Key() }

// Create makes env name of project: its address, network namespace, bridge
// and workspace. It records its intent first, so an interrupted create is
// finished or undone by `cilo doctor --fix`; on error it removes what it
// made.
func (m *Manager) Create(ctx context.Context, p *config.Project, name string) (*state.Env, error) {
	if err := config.ValidateEnvName(name); err != nil {
		return nil, err
	}
	if err := checkPrivilege(); err != nil {
		return nil, err
	}
	taken, err := m.prepareHost(ctx)
	if err != nil {
		return nil, err
	}
	return m.create(ctx, p, name, taken)
}

// prepareHost makes the host-wide pieces every env relies on and reads
// the host's routes and addresses in the pool, which a new env's subnet
// must not overlap. They are read before the claim: envs created
// meanwhile are skipped by index, so one read serves a whole batch.
func (m *Manager) prepareHost(ctx context.Context) ([]netip.Prefix, error) {
	if err := m.net.EnsureHost(ctx); err != nil {
		return nil, err
	}
	return m.net.HostPrefixes()
}

// create is Create once the host is prepared.
func (m *Manager) create(ctx context.Context, p *config.Project, name string, taken []netip.Prefix) (*state.Env, error) {
	env, err := m.reserve(ctx, p, name, taken)
	if err != nil {
		return nil, err
	}
	if err := m.build(ctx, p, env); err != nil {
		cleanup := context.WithoutCancel(ctx)
		if uerr := m.teardown(cleanup, env); uerr != nil {
			err = errors.Join(err, fmt.Errorf("undo partial create (run cilo doctor --fix): %w", uerr))
		}
		return nil, err
	}
	m.ensureDNS(ctx, env)
	return env, nil
}

// CreateAll creates the named envs of p side by side and calls done, one
// call at a time, as each is made or fails. Names are checked first: a bad
// or repeated name creates nothing. One process making many envs pays its
// start and the host's preparation once, and their kernel work overlaps.
func (m *Manager) CreateAll(ctx context.Context, p *config.Project, names []string, done func(name string, env *state.Env, err error)) error {
	seen := map[string]bool{}
	for _, n := range names {
		if err := config.ValidateEnvName(n); err != nil {
			return err
		}
		if seen[n] {
			return fmt.Errorf("env %q named twice", n)
		}
		seen[n] = true
	}
	if err := checkPrivilege(); err != nil {
		return err
	}
	taken, err := m.prepareHost(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			env, err := m.create(ctx, p, n, taken)
			mu.Lock()
			defer mu.Unlock()
			done(n, env, err)
		}()
	}
	wg.Wait()
	return nil
}

// servedWait bounds how long a command waits for the DNS server to serve
// what it just recorded: normally a reload, at most 20 ms behind.
const servedWait = time.Second

// ensureDNS starts the DNS server if it is not running and waits until it
// serves env as recorded, so that a command started right after this one
// finds its names. An env without names still works, so a failure is a
// warning, not an error.
func (m *Manager) ensureDNS(ctx context.Context, env *state.Env) {
	if m.dns == nil {
		return
	}
	if err := m.dns.EnsureRunning(ctx); err != nil {
		m.logf("warning: DNS server not running, env names will not resolve: %v", err)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, servedWait)
	defer cancel()
	if err := m.dns.WaitServed(wctx, env); err != nil {
		m.logf("warning: %v: env names may take a moment to resolve", err)
	}
}

// reserve records the env with status creating and its pool index; the
// store's index claims make parallel creates never take the same subnet.
func (m *Manager) reserve(ctx context.Context, p *config.Project, name string, taken []netip.Prefix) (*state.Env, error) {
	return m.store.Insert(ctx, state.Key(p.Name, name), func(used func(int) bool) (*state.Env, error) {
		i, err := m.net.Pool().Allocate(used, taken)
		if err != nil {
			return nil, fmt.Errorf("create env %q: %w", name, err)
		}
		l := m.net.Link(i, m.netnsName(p.Name, name))
		now := time.Now().UTC()
		return &state.Env{
			Project:      p.Name,
			Name:         name,
			Status:       state.StatusCreating,
			Index:        i,
			Subnet:       l.Subnet,
			Gateway:      l.Gateway,
			IP:           l.IP,
			Netns:        l.Netns,
			Bridge:       l.Bridge,
			Source:       p.Root,
			ComposeFiles: p.Config.ComposeFiles,
			EnvFiles:     p.Config.EnvFiles,
			Intent:       &state.Intent{Op: "create", PID: os.Getpid(), Started: now},
			CreatedAt:    now,
			UpdatedAt:    now,
		}, nil
	})
}

func (m *Manager) build(ctx context.Context, p *config.Project, env *state.Env) error {
	if err := m.net.Create(ctx, m.link(env), m.label(env)); err != nil {
		return err
	}
	ws, err := m.ws.Create(ctx, m.workspaceID(env.Project, env.Name), p.Root, overlayfs.CreateOptions{Exclude: p.Config.Workspace.Exclude})
	if err != nil {
		return fmt.Errorf("create workspace of env %q: %w", env.Name, err)
	}
	if err := m.writeRunFiles(env); err != nil {
		return err
	}
	e, err := m.store.Update(ctx, env.Key(), func(e *state.Env) error {
		e.Workspace = ws.Path
		e.WorkspaceMode = string(ws.Mode)
		e.Status = state.StatusRunning
		e.Intent = nil
		e.UpdatedAt = time.Now().UTC()
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("env %q vanished from the state while being created", env.Name)
	}
	if err != nil {
		return err
	}
	*env = *e
	return nil
}

// Up brings env name to running: creates it if needed, restores its
// network and workspace after a reboot, and starts its compose services.
func (m *Manager) Up(ctx context.Context, p *config.Project, name string) (*state.Env, error) {
	env, err := m.ready(ctx, p, name)
	if err != nil {
		return nil, err
	}
	if env, err = m.useComposeFiles(ctx, env, p.Config.ComposeFiles); err != nil {
		return nil, err
	}
	if m.svc == nil {
		return env, nil
	}
	services, err := m.svc.Up(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("start services of env %q: %w", name, err)
	}
	return m.setServices(ctx, env, services, state.StatusRunning)
}

// useComposeFiles records the compose files named for this call (-f, or
// .cilo/config.yml) on the env, so later calls keep using them.
func (m *Manager) useComposeFiles(ctx context.Context, env *state.Env, files []string) (*state.Env, error) {
	if len(files) == 0 || slices.Equal(files, env.ComposeFiles) {
		return env, nil
	}
	return m.store.Update(ctx, env.Key(), func(e *state.Env) error {
		e.ComposeFiles = files
		return nil
	})
}

// ready returns the env with its network and workspace in place, creating
// it when it does not exist and waiting when another cilo is creating it.
func (m *Manager) ready(ctx context.Context, p *config.Project, name string) (*state.Env, error) {
	if err := config.ValidateEnvName(name); err != nil {
		return nil, err
	}
	for {
		env, err := m.Get(ctx, p.Name, name)
		if errors.Is(err, ErrNotFound) {
			env, err = m.Create(ctx, p, name)
			if errors.Is(err, ErrExists) {
				continue // another cilo created it first
			}
			return env, err
		}
		if err != nil {
			return nil, err
		}
		if env.Intent != nil && processAlive(env.Intent.PID) {
			if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
				return nil, fmt.Errorf("wait for env %q (%s by pid %d): %w", name, env.Intent.Op, env.Intent.PID, err)
			}
			continue
		}
		if env.Intent != nil {
			return nil, fmt.Errorf("env %q was left half-%sd by an interrupted cilo (pid %d): run cilo doctor --fix", name, env.Intent.Op, env.Intent.PID)
		}
		return env, m.restore(ctx, env)
	}
}

// restore puts back what a reboot takes away: the namespace and bridge
// (same addresses, from the state), the workspace mount and the run
// files. When everything is in place it costs a few stat calls.
func (m *Manager) restore(ctx context.Context, env *state.Env) error {
	if enter.Ready(m.cfg, env) {
		return nil
	}
	l := m.link(env)
	if !m.net.Exists(l) {
		if err := checkPrivilege(); err != nil {
			return err
		}
		if err := m.net.Delete(ctx, l); err != nil {
			return fmt.Errorf("restore network of env %q: %w", env.Name, err)
		}
		if err := m.net.EnsureHost(ctx); err != nil {
			return err
		}
		if err := m.net.Create(ctx, l, m.label(env)); err != nil {
			return fmt.Errorf("restore network of env %q: %w", env.Name, err)
		}
		m.ensureDNS(ctx, env) // a reboot took the DNS server too
	}
	if _, err := m.ws.Ensure(ctx, m.workspaceID(env.Project, env.Name)); err != nil {
		return fmt.Errorf("mount workspace of env %q: %w", env.Name, err)
	}
	if _, err := os.Stat(filepath.Join(m.cfg.EnvRunDir(env.Project, env.Name), "hosts")); err != nil {
		return m.writeRunFiles(env)
	}
	return nil
}

func (m *Manager) setServices(ctx context.Context, env *state.Env, services []state.Service, status state.Status) (*state.Env, error) {
	if env.Status == status && slices.EqualFunc(env.Services, services, sameService) {
		// The common `cilo run` of an env that is up: nothing to
		// record, so no lock and no fsync on the way to the command.
		return env, m.writeRunFiles(env)
	}
	out, err := m.store.Update(ctx, env.Key(), func(e *state.Env) error {
		e.Services = services
		e.Status = status
		e.UpdatedAt = time.Now().UTC()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := m.writeRunFiles(out); err != nil {
		return out, err
	}
	m.ensureDNS(ctx, out) // the services' names, before the caller goes on
	return out, nil
}

func sameService(a, b state.Service) bool {
	return a.Name == b.Name && a.Ingress == b.Ingress &&
		slices.Equal(a.Addrs, b.Addrs) && slices.Equal(a.Hostnames, b.Hostnames) && slices.Equal(a.Ports, b.Ports)
}

// Down stops what runs in the env (its services and any process started
// in it) and keeps its workspace and address.
func (m *Manager) Down(ctx context.Context, project, name string) (*state.Env, error) {
	env, err := m.Get(ctx, project, name)
	if err != nil {
		return nil, err
	}
	if err := checkPrivilege(); err != nil {
		return nil, err
	}
	if m.svc != nil {
		if err := m.svc.Down(ctx, env); err != nil {
			return nil, fmt.Errorf("stop services of env %q: %w", name, err)
		}
	}
	if err := killNetnsProcesses(ctx, env.Netns); err != nil {
		return nil, fmt.Errorf("stop processes of env %q: %w", name, err)
	}
	return m.setServices(ctx, env, nil, state.StatusStopped)
}

// Destroy removes the env and everything it had: services, processes,
// network, workspace and runtime files, then its record. It records intent
// first and tolerates missing pieces, so it also finishes an interrupted
// create or destroy.
func (m *Manager) Destroy(ctx context.Context, project, name string) error {
	if err := checkPrivilege(); err != nil {
		return err
	}
	env, err := m.store.Update(ctx, state.Key(project, name), func(e *state.Env) error {
		if e.Intent != nil && e.Intent.PID != os.Getpid() && processAlive(e.Intent.PID) {
			return fmt.Errorf("env %q is being %sd by pid %d; try again when it is done", name, e.Intent.Op, e.Intent.PID)
		}
		e.Status = state.StatusDestroying
		e.Intent = &state.Intent{Op: "destroy", PID: os.Getpid(), Started: time.Now().UTC()}
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("env %q of project %s: %w", name, project, ErrNotFound)
	}
	if err != nil {
		return err
	}
	// Teardown must finish even if the caller gives up: a half-removed
	// env strands veths and mounts.
	ctx = context.WithoutCancel(ctx)
	if err := m.teardown(ctx, env); err != nil {
		return fmt.Errorf("destroy env %q (run cilo doctor --fix to finish): %w", name, err)
	}
	return nil
}

// teardown removes every resource of env and then its record.
func (m *Manager) teardown(ctx context.Context, env *state.Env) error {
	var errs []error
	if m.svc != nil {
		if err := m.svc.Remove(ctx, env); err != nil {
			errs = append(errs, fmt.Errorf("remove services: %w", err))
		}
	}
	if nsfs.Exists(env.Netns) {
		if err := killNetnsProcesses(ctx, env.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.net.Delete(ctx, m.link(env)); err != nil {
		errs = append(errs, err)
	}
	if err := m.ws.Remove(ctx, m.workspaceID(env.Project, env.Name)); err != nil {
		errs = append(errs, fmt.Errorf("remove workspace: %w", err))
	}
	if err := os.RemoveAll(m.cfg.EnvRunDir(env.Project, env.Name)); err != nil {
		errs = append(errs, err)
	}
	os.Remove(filepath.Dir(m.cfg.EnvRunDir(env.Project, env.Name))) // the project dir, when empty
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return m.store.Delete(ctx, env.Key())
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
