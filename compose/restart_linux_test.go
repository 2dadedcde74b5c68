package compose

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/cilo-dev/cilo/compose/supervise"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// waitFor polls cond until it holds or timeout passes, then fails the
// test naming what it waited for.
func (h *harness) waitFor(timeout time.Duration, what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// container is the service's first replica as Ps shows it.
func (h *harness) container(env *state.Env, service string) Container {
	h.t.Helper()
	cs, err := h.engine.Ps(context.Background(), env)
	if err != nil {
		h.t.Fatalf("ps: %v", err)
	}
	for _, c := range cs {
		if c.Service == service {
			return c
		}
	}
	h.t.Fatalf("ps: no container of service %s in %+v", service, cs)
	return Container{}
}

// starts counts how often a testsvc crash service started, from its log.
func (h *harness) starts(env *state.Env, service string) int {
	b, _ := os.ReadFile(h.engine.logPath(env.Project, env.Name, service))
	return strings.Count(string(b), "started\n")
}

// TestRestartAfterCLIExited is issue #5's test: a crashing service is
// restarted by its policy after the engine that started it is gone, with
// the restart count in ps, and cilo down leaves it down for good.
func TestRestartAfterCLIExited(t *testing.T) {
	h := newHarness(t)
	env := h.newEnv(0, "crash", map[string]string{"compose.yaml": `
services:
  crasher:
    image: cilo-test/testsvc
    command: ["crash", "-after", "300ms", "-code", "3"]
    restart: always
`})
	if _, err := h.engine.Up(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	// The CLI exits: only the supervisor watches the container now.
	h.engine.Close()
	h.waitFor(20*time.Second, "crasher restarted twice", func() bool { return h.starts(env, "crasher") >= 3 })
	if c := h.container(env, "crasher"); c.Restarts < 2 {
		t.Errorf("ps shows %d restarts after 3 starts", c.Restarts)
	}
	// Down while it crashes and restarts.
	if err := h.engine.Down(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if left := h.leftovers(env); len(left) != 0 {
		t.Fatalf("left after down: %v", left)
	}
	// With no container to watch, the supervisor exits by itself.
	h.waitFor(10*time.Second, "supervisor exits once idle", func() bool { return h.supervisorPID() == 0 })
}

// TestStoppedByUserIsNotRevived checks the mark cilo down sets before it
// stops a task: whatever the policy, the supervisor leaves the container
// alone. A later Up starts it again and clears the mark.
func TestStoppedByUserIsNotRevived(t *testing.T) {
	h := newHarness(t)
	env := h.newEnv(0, "marked", map[string]string{"compose.yaml": `
services:
  sleeper:
    image: cilo-test/testsvc
    command: ["sleep"]
    restart: always
`})
	ctx := context.Background()
	if _, err := h.engine.Up(ctx, env); err != nil {
		t.Fatal(err)
	}
	kill := func() {
		t.Helper()
		ctr, err := h.client.LoadContainer(h.ctx, h.container(env, "sleeper").ID)
		if err != nil {
			t.Fatal(err)
		}
		task, err := ctr.Task(h.ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Kill(h.ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	ctr, err := h.client.LoadContainer(h.ctx, h.container(env, "sleeper").ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctr.SetLabels(h.ctx, supervise.StoppedLabels()); err != nil {
		t.Fatal(err)
	}
	kill()
	h.waitFor(10*time.Second, "sleeper stopped", func() bool { return h.container(env, "sleeper").Status == string(containerd.Stopped) })
	time.Sleep(time.Second) // ten times the first backoff
	if c := h.container(env, "sleeper"); c.Status != string(containerd.Stopped) || c.Restarts != 0 {
		t.Fatalf("container stopped by the user: %+v, want stopped with no restarts", c)
	}

	if _, err := h.engine.Up(ctx, env); err != nil {
		t.Fatal(err)
	}
	if c := h.container(env, "sleeper"); c.Status != string(containerd.Running) {
		t.Fatalf("after up: %+v, want running", c)
	}
	kill()
	h.waitFor(10*time.Second, "sleeper restarted after up cleared the mark", func() bool {
		c := h.container(env, "sleeper")
		return c.Status == string(containerd.Running) && c.Restarts == 1
	})
}

// TestRestartsExitMissedWhileAway checks the supervisor's look at every
// container when it starts: an exit while none ran is caught.
func TestRestartsExitMissedWhileAway(t *testing.T) {
	h := newHarness(t)
	env := h.newEnv(0, "missed", map[string]string{"compose.yaml": `
services:
  crasher:
    image: cilo-test/testsvc
    command: ["crash", "-after", "1s", "-code", "3"]
    restart: on-failure
`})
	ctx := context.Background()
	if _, err := h.engine.Up(ctx, env); err != nil {
		t.Fatal(err)
	}
	h.stopSupervisor()
	h.waitFor(10*time.Second, "crasher exited", func() bool { return h.container(env, "crasher").Status == string(containerd.Stopped) })
	if c := h.container(env, "crasher"); c.Restarts != 0 {
		t.Fatalf("restarted with no supervisor running: %+v", c)
	}
	release, err := h.opts.Supervisor.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()
	h.waitFor(10*time.Second, "crasher restarted by the new supervisor", func() bool { return h.starts(env, "crasher") >= 2 })
	if c := h.container(env, "crasher"); c.Restarts < 1 {
		t.Fatalf("ps after the restart: %+v", c)
	}
}

// TestRestartAfterContainerdRestart runs a containerd of its own, stops it
// while a service is about to crash, and starts it again: the supervisor
// reconnects and restarts the service.
func TestRestartAfterContainerdRestart(t *testing.T) {
	requireRoot(t)
	ctrd := startContainerd(t)
	h := newHarnessAt(t, ctrd.address)
	env := h.newEnv(0, "reconnect", map[string]string{"compose.yaml": `
services:
  crasher:
    image: cilo-test/testsvc
    command: ["crash", "-after", "1500ms", "-code", "3"]
    restart: on-failure:1
`})
	ctx := context.Background()
	if _, err := h.engine.Up(ctx, env); err != nil {
		t.Fatal(err)
	}
	h.engine.Close()
	ctrd.stop()
	time.Sleep(2500 * time.Millisecond) // the crash happens meanwhile
	ctrd.start()
	h.waitFor(20*time.Second, "crasher restarted after containerd came back", func() bool { return h.starts(env, "crasher") >= 2 })
	h.waitFor(10*time.Second, "crasher stopped after its one retry", func() bool {
		c := h.container(env, "crasher")
		return c.Status == string(containerd.Stopped) && c.Restarts == 1
	})
}

// privateContainerd is a containerd daemon of one test, with its own root,
// state and socket.
type privateContainerd struct {
	t       *testing.T
	config  string
	address string
	log     string
	cmd     *exec.Cmd
}

func startContainerd(t *testing.T) *privateContainerd {
	t.Helper()
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Fatalf("containerd is not installed: run sudo scripts/ensure-containerd.sh")
	}
	dir := t.TempDir()
	p := &privateContainerd{t: t, config: filepath.Join(dir, "config.toml"),
		address: filepath.Join(dir, "containerd.sock"), log: filepath.Join(dir, "containerd.log")}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), p.address, p.address+".ttrpc")
	if err := os.WriteFile(p.config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p.start()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("private containerd's log (last 4 kB):\n%s", b[max(0, len(b)-4096):])
		}
	})
	return p
}

func (p *privateContainerd) start() {
	p.t.Helper()
	log, err := os.OpenFile(p.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer log.Close()
	p.cmd = exec.Command("containerd", "--config", p.config)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start containerd: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := containerd.New(p.address, containerd.WithTimeout(time.Second))
		if err == nil {
			vctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = c.Version(vctx)
			cancel()
			c.Close()
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("private containerd does not answer on %s: %v", p.address, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the daemon and waits for it; its shims and tasks live on, as
// when a packaged containerd is restarted.
func (p *privateContainerd) stop() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
	p.cmd = nil
}

// TestLeavesContainerdRestartMonitor: a container an older cilo put under
// containerd's restart monitor is taken out of it when up reuses it, so
// the supervisor is the only one restarting tasks.
func TestLeavesContainerdRestartMonitor(t *testing.T) {
	h := newHarness(t)
	env := h.newEnv(1, "legacy", map[string]string{"compose.yaml": `
services:
  box:
    image: cilo-test/testsvc
    command: ["sleep"]
`})
	if _, err := h.engine.Up(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	ctr, err := h.client.LoadContainer(h.ctx, h.container(env, "box").ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctr.SetLabels(h.ctx, map[string]string{"containerd.io/restart.status": "running"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.engine.Up(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	labels, err := ctr.Labels(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := labels["containerd.io/restart.status"]; ok {
		t.Fatalf("the restart monitor's label survived up: %v", labels)
	}
}
