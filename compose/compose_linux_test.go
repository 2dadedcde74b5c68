package compose

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilo-dev/cilo/compose/supervise"
	"github.com/cilo-dev/cilo/dns"
	"github.com/cilo-dev/cilo/nsnet"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// stack is a 3-service compose file: a db with a healthcheck and a
// published port, a one-shot migration, and an api that needs both.
const stack = `
services:
  db:
    image: cilo-test/testsvc
    command: ["http", "-listen", ":5432", "-name", "db", "-delay", "300ms"]
    environment:
      CILO_MARK: ${MARK}
    ports: ["15432:5432"]
    healthcheck:
      test: ["CMD", "/testsvc", "get", "http://localhost:5432/"]
      interval: 200ms
      retries: 20
  migrate:
    image: cilo-test/testsvc
    command: ["get", "http://db:5432/"]
    depends_on:
      db: {condition: service_healthy}
  api:
    image: cilo-test/testsvc
    command: ["http", "-listen", ":8080", "-name", "api", "-require", "http://db:5432/"]
    environment:
      CILO_MARK: ${MARK}
    ports: ["18080:8080"]
    restart: unless-stopped
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
    volumes:
      - ./data:/data
`

func TestTwoEnvsOfOneStack(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	a := h.newEnv(0, "a", map[string]string{"compose.yaml": stack, ".env": "MARK=a\n"})
	b := h.newEnv(1, "b", map[string]string{"compose.yaml": stack, ".env": "MARK=b\n"})
	svcs := map[string][]string{}
	// Both envs come up at once, from one engine.
	results := make([][]state.Service, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, env := range []*state.Env{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = h.engine.Up(ctx, env)
		}()
	}
	wg.Wait()
	for i, env := range []*state.Env{a, b} {
		if errs[i] != nil {
			t.Fatalf("up %s: %v\nlogs:\n%s", env.Name, errs[i], h.logs)
		}
		for _, s := range results[i] {
			for _, ad := range s.Addrs {
				svcs[env.Name] = append(svcs[env.Name], s.Name+"="+ad.String())
			}
		}
		// As the integrator records them for the DNS server.
		env.Services, env.Status = results[i], state.StatusRunning
	}
	// The zone cilo's DNS server builds from what Up returned.
	zone := dns.NewZone("test", []*state.Env{a, b}, 1)
	if got := strings.Join(svcs["a"], " "); !strings.Contains(got, "api=10.232.") || len(svcs["a"]) != 3 {
		t.Fatalf("services of a = %v", svcs["a"])
	}
	dbAddr := func(env *state.Env) string { return h.net.Pool().Host(env.Index, 11).String() } // api .10, db .11, migrate .12

	for _, env := range []*state.Env{a, b} {
		mark := env.Name
		tests := []struct {
			name string
			run  func() (string, error)
		}{
			{"api_reaches_db_by_bare_name", func() (string, error) { return h.exec(env, "api", "/testsvc", "get", "http://db:5432/") }},
			{"api_reaches_db_by_full_name", func() (string, error) {
				return h.exec(env, "api", "/testsvc", "get", "http://db."+env.Name+".test:5432/")
			}},
			{"env_localhost_ipv4_reaches_own_db", func() (string, error) { return eventually(env.Netns, tcp4("127.0.0.1:15432"), "/") }},
			{"env_localhost_ipv6_first_reaches_own_db", func() (string, error) { return eventually(env.Netns, v6First(15432), "/") }},
			{"env_localhost_reaches_own_api", func() (string, error) { return eventually(env.Netns, tcp4("127.0.0.1:18080"), "/") }},
			{"host_reaches_db_at_its_address", func() (string, error) { return eventually("", tcp4(dbAddr(env)+":5432"), "/") }},
			{"host_reaches_db_by_dns_name", func() (string, error) {
				node, res := zone.Lookup(nil, "db."+env.Name+".test.")
				if res != dns.Found || len(node.Addrs) != 1 {
					return "", fmt.Errorf("db.%s.test does not resolve: %v", env.Name, res)
				}
				return eventually("", tcp4(node.Addrs[0].String()+":5432"), "/")
			}},
		}
		for _, tt := range tests {
			t.Run(env.Name+"_"+tt.name, func(t *testing.T) {
				got, err := tt.run()
				if err != nil {
					t.Fatalf("err %v (output %q)", err, got)
				}
				want := "db " + mark
				if strings.Contains(tt.name, "api") && !strings.HasPrefix(tt.name, "api") {
					want = "api " + mark
				}
				if got != want {
					t.Fatalf("got %q, want %q", got, want)
				}
			})
		}
	}
	t.Run("env_a_cannot_reach_env_b_db", func(t *testing.T) {
		if got, err := dialIn(a.Netns, tcp4(dbAddr(b)+":5432")); err == nil {
			t.Fatalf("env a reached env b's db: %q", got)
		}
		if got, err := h.exec(a, "api", "/testsvc", "get", "http://"+dbAddr(b)+":5432/"); err == nil {
			t.Fatalf("env a's api reached env b's db: %q", got)
		}
	})

	t.Run("ps", func(t *testing.T) {
		ps, err := h.engine.Ps(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range ps {
			s := c.Service + ":" + c.Status
			if c.Health != "" {
				s += ":" + c.Health
			}
			if c.ExitCode != nil {
				s += fmt.Sprintf(":%d", *c.ExitCode)
			}
			got = append(got, s)
		}
		if want := "api:running db:running:healthy migrate:stopped:0"; strings.Join(got, " ") != want {
			t.Fatalf("ps = %v, want %s", got, want)
		}
		if p := ps[1].Ports; len(p) != 1 || p[0].Published != 15432 || p[0].Target != 5432 || p[0].Protocol != "tcp" {
			t.Errorf("ports of db = %+v", p)
		}
	})
	t.Run("logs", func(t *testing.T) {
		var buf bytes.Buffer
		if err := h.engine.Logs(ctx, a, LogsOptions{Tail: -1}, &buf); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"db      | db listening on :5432", "api     | api listening on :8080", "migrate | db a"} {
			if !strings.Contains(buf.String(), want) {
				t.Errorf("logs lack %q:\n%s", want, buf.String())
			}
		}
		buf.Reset()
		if err := h.engine.Logs(ctx, a, LogsOptions{Service: "db", Tail: 1}, &buf); err != nil {
			t.Fatal(err)
		}
		if buf.String() != "db listening on :5432 as db\n" {
			t.Errorf("tail 1 of db = %q", buf.String())
		}
	})
	t.Run("up_again_keeps_running_containers_and_finished_jobs", func(t *testing.T) {
		before, _ := h.client.LoadContainer(h.ctx, containerID("app", "a", "db", 1))
		bt, _ := before.Task(h.ctx, nil)
		if _, err := h.engine.Up(ctx, a); err != nil {
			t.Fatal(err)
		}
		at, err := before.Task(h.ctx, nil)
		if err != nil || at.Pid() != bt.Pid() {
			t.Fatalf("db task replaced: pid %d -> %v, %v", bt.Pid(), at, err)
		}
		b, _ := os.ReadFile(h.engine.logPath("app", "a", "migrate"))
		if n := strings.Count(string(b), "db a"); n != 1 {
			t.Fatalf("migrate ran %d times, want once: %q", n, b)
		}
	})
	t.Run("down_and_remove_leave_nothing", func(t *testing.T) {
		for _, env := range []*state.Env{a, b} {
			if err := h.engine.Down(ctx, env); err != nil {
				t.Fatal(err)
			}
			if got, err := nsnet.PortForwards(env.Netns); err != nil || len(got) != 0 {
				t.Errorf("port forwards after down: %v %v", got, err)
			}
			if err := h.engine.Remove(ctx, env); err != nil {
				t.Fatal(err)
			}
			if left := h.leftovers(env); len(left) != 0 {
				t.Errorf("left after remove of %s: %v", env.Name, left)
			}
		}
		if _, err := os.Stat(h.opts.StateDir + "/logs/app/a"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("logs survive remove: %v", err)
		}
	})
}

// exec runs a command in a service and returns its output, failing on a
// non-zero status.
func (h *harness) exec(env *state.Env, service string, args ...string) (string, error) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code, err := h.engine.Exec(ctx, env, ExecOptions{Service: service, Args: args, Stdout: &out, Stderr: &out})
	if err != nil {
		return out.String(), err
	}
	if code != 0 {
		return out.String(), fmt.Errorf("exit status %d", code)
	}
	return out.String(), nil
}

func TestBadInputStartsNothing(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name    string
		compose string
		opts    func(*Options)
		want    []string
	}{
		{"invalid_yaml", "services:\n  db:\n    image: [unclosed\n", nil, []string{"compose.yaml", "line"}},
		{"unknown_field_type", "services:\n  db:\n    image: cilo-test/testsvc\n    ports: 12\n", nil, []string{"compose.yaml", "ports"}},
		{"unknown_image_no_registry", "services:\n  db:\n    image: localhost:1/cilo-missing:latest\n", nil,
			[]string{`service "db"`, "localhost:1/cilo-missing:latest", "cilo image load"}},
		{"build_without_buildkitd", "services:\n  web:\n    build: .\n", nil,
			[]string{`service "web"`, "app-web", "no buildkitd", "run a buildkitd", "cilo image load"}},
		{"port_published_twice", "services:\n  a:\n    image: cilo-test/testsvc\n    ports: [\"8080:80\"]\n  b:\n    image: cilo-test/testsvc\n    ports: [\"8080:81\"]\n", nil,
			[]string{"8080/tcp", "published twice", `"a"`, `"b"`}},
		{"containerd_not_running", "services:\n  db:\n    image: cilo-test/testsvc\n", func(o *Options) { o.Address = "/nonexistent/containerd.sock" },
			[]string{"containerd is not running", "ensure-containerd.sh"}},
		{"invalid_restart_policy", "services:\n  db:\n    image: cilo-test/testsvc\n    restart: sometimes\n", nil,
			[]string{`service "db"`, `"sometimes"`, "on-failure[:N]"}},
		{"restart_supervisor_fails", "services:\n  db:\n    image: cilo-test/testsvc\n    restart: always\n", func(o *Options) {
			o.Supervisor = &supervise.Launcher{RunDir: filepath.Join(o.RunDir, "failing"), LogFile: filepath.Join(o.StateDir, "failing.log"), Command: []string{"false"}}
		}, []string{"restart supervisor exited", "failing.log"}},
	}
	t.Setenv("BUILDKIT_HOST", "unix:///nonexistent/buildkitd.sock")
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := h.newEnv(3+i, "bad"+string(rune('a'+i)), map[string]string{"compose.yaml": tt.compose, "Dockerfile": "FROM scratch\n"})
			e := h.engine
			if tt.opts != nil {
				o := h.opts
				tt.opts(&o)
				e = New(o)
				defer e.Close()
			}
			_, err := e.Up(context.Background(), env)
			if err == nil {
				t.Fatal("up succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if left := h.leftovers(env); len(left) != 0 {
				t.Errorf("half-started: %v", left)
			}
			if fw, _ := nsnet.PortForwards(env.Netns); len(fw) != 0 {
				t.Errorf("port forwards installed: %v", fw)
			}
		})
	}
}

func TestNoComposeFileCostsNothing(t *testing.T) {
	requireRoot(t)
	// An unreachable containerd proves no connection is attempted.
	e := New(Options{Address: "/nonexistent/containerd.sock", Prefix: "cx", Pool: netip.MustParsePrefix("10.232.0.0/22"), StateDir: t.TempDir(), RunDir: t.TempDir()})
	env := &state.Env{Project: "app", Name: "plain", Workspace: t.TempDir()}
	svcs, err := e.Up(context.Background(), env)
	if err != nil || svcs != nil {
		t.Fatalf("Up = %v, %v; want nil, nil", svcs, err)
	}
	if err := e.Down(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if err := e.Remove(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	// Only logs left (the containers went with an earlier Down): Remove
	// deletes them without containerd.
	logs := e.logPath("app", "plain", "db")
	os.MkdirAll(filepath.Dir(logs), 0o755)
	os.WriteFile(logs, []byte("x\n"), 0o644)
	if err := e.Remove(context.Background(), env); err != nil {
		t.Fatalf("remove with only logs left: %v", err)
	}
	if _, err := os.Stat(logs); !os.IsNotExist(err) {
		t.Fatalf("logs survive remove: %v", err)
	}
	// Recorded services mean containers may exist: Down must say that
	// containerd is needed rather than pretend.
	env.Services = []state.Service{{Name: "db"}}
	if err := e.Down(context.Background(), env); !errors.Is(err, ErrContainerdUnavailable) || !strings.Contains(err.Error(), "ensure-containerd.sh") {
		t.Fatalf("down with services and no containerd: %v", err)
	}
}
