package e2e

import (
	"strings"
	"testing"
)

// TestEnvNamesResolveInsideAndFromHost checks the wiring of create, the
// on-demand DNS server and the env's private resolv.conf and hosts.
func TestEnvNamesResolveInsideAndFromHost(t *testing.T) {
	w := newWorld(t, 23)
	w.mustCilo("create", "one")
	w.mustCilo("create", "two")
	one, two := w.status("one"), w.status("two")

	tests := []struct {
		name, env, host, want string
	}{
		{"own_apex_inside", "one", "demo-app.one.test", one.IP},
		{"other_env_apex_inside", "one", "demo-app.two.test", two.IP},
		{"localhost_is_ipv4_only", "one", "localhost", "127.0.0.1"},
		{"apex_from_two", "two", "demo-app.two.test", two.IP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := w.mustCilo("run", "-e", tt.env, "--", "getent", "ahosts", tt.host)
			if f := strings.Fields(out); len(f) == 0 || f[0] != tt.want {
				t.Fatalf("getent ahosts %s in %s = %q, want %s first", tt.host, tt.env, out, tt.want)
			}
			if strings.Contains(out, "::1") {
				t.Fatalf("%s resolved to ::1 inside the env: %q", tt.host, out)
			}
		})
	}
}
