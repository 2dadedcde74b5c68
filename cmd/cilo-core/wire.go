package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"

	"github.com/spf13/cobra"
	yaml "go.yaml.in/yaml/v4"
	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/dns"
	"github.com/cilo-dev/cilo/overlayfs"
	"github.com/cilo-dev/cilo/sandbox"
	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/config/parsed"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// manager wires the lifecycle to its backends for the resolved config:
// overlay workspaces (with a watcher process per source), compose services (through cilo-compose, or
// in-process in that build) and the DNS server started on demand.
func (a *app) manager() (*sandbox.Manager, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(a.stderr, "cilo: "+format+"\n", args...) }
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find cilo's own binary: %w", err)
	}
	ws, err := overlayfs.New(sandbox.WorkspaceRoot(a.cfg), overlayfs.WithProgress(a.stderr), overlayfs.WithLogf(logf),
		overlayfs.WithWatcher(func() *exec.Cmd { return exec.Command(exe, workspaceWatchCmd) }))
	if err != nil {
		return nil, sandbox.PrivilegeHint(err)
	}
	return sandbox.New(a.cfg,
		sandbox.WithLogf(logf),
		sandbox.WithWorkspaces(ws),
		sandbox.WithServices(composeServices(a, logf)),
		sandbox.WithDNS(dnsBackend{dns.NewLauncher(dnsConfig(a.cfg), exe), dnsConfig(a.cfg)}),
	)
}

// dnsBackend is the DNS server as the lifecycle needs it.
type dnsBackend struct {
	*dns.Launcher
	cfg dns.Config
}

func (d dnsBackend) ResolvConf(env *state.Env) []byte { return dns.ResolvConf(env, d.cfg.Suffix) }

func (d dnsBackend) WaitServed(ctx context.Context, env *state.Env) error {
	return dns.WaitServed(ctx, d.cfg.Addr, d.cfg.Suffix, env)
}

func (d dnsBackend) Health(ctx context.Context) (string, error) {
	st, err := dns.GetStatus(ctx, d.cfg)
	switch {
	case err != nil:
		return "", err
	case !st.Running:
		return "", fmt.Errorf("not running on %s", st.Addr)
	case !st.Healthy:
		return "", fmt.Errorf("pid %d does not answer on %s: %s", st.PID, st.Addr, st.Error)
	}
	return fmt.Sprintf("pid %d answers on %s", st.PID, st.Addr), nil
}

// envNameArg splits an env named on the command line ("env" in the current
// project, or "project/env") without requiring that it exists.
func (a *app) envNameArg(arg string) (*sandbox.Manager, string, string, error) {
	m, err := a.manager()
	if err != nil {
		return nil, "", "", err
	}
	project, name, err := config.ParseEnvArg(".", arg, a.decode)
	if err != nil {
		return nil, "", "", usageError{err}
	}
	return m, project, name, nil
}

// envFromArg resolves an existing env named on the command line.
func (a *app) envFromArg(cmd *cobra.Command, arg string) (*state.Env, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	project, name, err := config.ParseEnvArg(".", arg, a.decode)
	if err != nil {
		return nil, a.envErr(err)
	}
	env, err := m.Get(cmd.Context(), project, name)
	if err != nil {
		return nil, a.envErr(err)
	}
	return env, nil
}

// managerForEnv is managerAndProject for a command about env name, which
// must be valid before anything is looked up.
func (a *app) managerForEnv(cmd *cobra.Command, name string) (*sandbox.Manager, *config.Project, error) {
	if err := config.ValidateEnvName(name); err != nil {
		return nil, nil, usageError{err}
	}
	return a.managerAndProject(cmd)
}

func (a *app) managerAndProject(cmd *cobra.Command) (*sandbox.Manager, *config.Project, error) {
	m, err := a.manager()
	if err != nil {
		return nil, nil, err
	}
	p, err := config.FindProject(".", a.decode)
	if err != nil {
		return nil, nil, err
	}
	return m, p, nil
}

// yamlDecoder reads config files as YAML and keeps what it read in c, so
// that the front, which has no YAML parser, can read them next time.
func yamlDecoder(c parsed.Cache) config.Decoder {
	return func(file string, b []byte, v any) error {
		return c.DecodeAndKeep(file, b, v, yaml.Unmarshal)
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
