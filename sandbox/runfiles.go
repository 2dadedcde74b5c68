package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilo-dev/cilo/sandbox/enter"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// writeRunFiles writes the env's private /etc/resolv.conf and /etc/hosts,
// which processes run in the env see through bind mounts in their own
// mount namespace. The host's files are never touched.
//
// localhost maps to 127.0.0.1 only: published ports are forwarded from
// 127.0.0.1 inside the env, so a client that tries ::1 first (Node, some
// Go resolvers) must not be offered ::1 for localhost.
func (m *Manager) writeRunFiles(env *state.Env) error {
	dir := m.cfg.EnvRunDir(env.Project, env.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create runtime dir of env %q: %w", env.Name, err)
	}
	resolv := []byte(fmt.Sprintf("nameserver %s\n", env.Gateway))
	if m.dns != nil {
		resolv = m.dns.ResolvConf(env)
	}
	if err := writeFileAtomic(filepath.Join(dir, "resolv.conf"), resolv); err != nil {
		return fmt.Errorf("write resolv.conf of env %q: %w", env.Name, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "hosts"), hostsFile(env, m.cfg.DNSSuffix)); err != nil {
		return fmt.Errorf("write hosts of env %q: %w", env.Name, err)
	}
	return nil
}

func hostsFile(env *state.Env, suffix string) []byte {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "%s\t%s\n", env.IP, enter.BaseHost(env, suffix))
	svcs := append([]state.Service(nil), env.Services...)
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Name < svcs[j].Name })
	for _, s := range svcs {
		if len(s.Addrs) == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s\t%s %s.%s.%s\n", s.Addrs[0], s.Name, s.Name, env.Name, suffix)
	}
	return []byte(b.String())
}

// writeFileAtomic replaces path with data unless it already holds exactly
// that, so the run path of an unchanged env writes nothing.
func writeFileAtomic(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	tmp := fmt.Sprintf("%s.tmp-%d", path, os.Getpid())
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func sortEnvs(envs []*state.Env) {
	sort.Slice(envs, func(i, j int) bool {
		if !envs[i].CreatedAt.Equal(envs[j].CreatedAt) {
			return envs[i].CreatedAt.Before(envs[j].CreatedAt)
		}
		return envs[i].Key() < envs[j].Key()
	})
}
