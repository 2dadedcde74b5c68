package enter

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/state"
)

func TestWorkDir(t *testing.T) {
	src, ws := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(ws, "a", "b"), 0o755)
	os.MkdirAll(filepath.Join(src, "only-in-source"), 0o755)
	tests := []struct {
		name, dir, want string
	}{
		{"root", src, ws},
		{"subdir", filepath.Join(src, "a", "b"), filepath.Join(ws, "a", "b")},
		{"missing_in_workspace", filepath.Join(src, "only-in-source"), ws},
		{"outside", "/tmp", ws},
		{"sibling_prefix", src + "-other", ws},
		{"unknown", "", ws},
	}
	for _, tt := range tests {
		if got := workDir(ws, src, tt.dir); got != tt.want {
			t.Errorf("%s: workDir(%q) = %q, want %q", tt.name, tt.dir, got, tt.want)
		}
	}
}

func TestCommandEnv(t *testing.T) {
	cfg := config.Default()
	env := &state.Env{Project: "shop", Name: "dev", Workspace: "/w", IP: netip.MustParseAddr("10.224.3.2")}
	tests := []struct {
		name string
		req  Request
		want []string // present, exactly
		gone []string // variables that must not appear with their old value
	}{
		{"plain", Request{Env: []string{"PATH=/bin", "CILO_ENV=stale"}},
			[]string{"PATH=/bin", "CILO_ENV=dev", "CILO_PROJECT=shop", "CILO_WORKSPACE=/w", "CILO_IP=10.224.3.2",
				"CILO_BASE_URL=http://shop.dev.test", "CILO_DNS_SUFFIX=test", "CILO_MODE=netns"},
			[]string{"CILO_ENV=stale"}},
		{"sudo_user", Request{Env: []string{"HOME=/root", "USER=root"}, User: &Credential{UID: 1000, Name: "ada", Home: "/home/ada"}},
			[]string{"HOME=/home/ada", "USER=ada", "LOGNAME=ada"},
			[]string{"HOME=/root", "USER=root"}},
	}
	for _, tt := range tests {
		got := commandEnv(cfg, env, tt.req)
		for _, w := range tt.want {
			if !slices.Contains(got, w) {
				t.Errorf("%s: %s missing from %q", tt.name, w, got)
			}
		}
		for _, g := range tt.gone {
			if slices.Contains(got, g) {
				t.Errorf("%s: %s still in %q", tt.name, g, got)
			}
		}
		seen := map[string]bool{}
		for _, kv := range got {
			k, _, _ := strings.Cut(kv, "=")
			if seen[k] {
				t.Errorf("%s: %s set twice in %q", tt.name, k, got)
			}
			seen[k] = true
		}
	}
}

func TestPrepareMissingProgram(t *testing.T) {
	env := &state.Env{Project: "shop", Name: "dev", Workspace: t.TempDir()}
	_, err := Prepare(config.Default(), env, "", Request{Argv: []string{"no-such-program-xyz"}})
	if err == nil || !strings.Contains(err.Error(), `run no-such-program-xyz in env "dev"`) {
		t.Fatalf("Prepare: %v", err)
	}
	if _, err := Prepare(config.Default(), env, "", Request{}); err == nil {
		t.Fatal("Prepare accepted no command")
	}
}
