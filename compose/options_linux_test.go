package compose

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	testimages "github.com/cilo-dev/cilo/test/images"
)

const optionsStack = `
services:
  box:
    image: cilo-test/testsvc
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo started; exec /testsvc sleep"]
    working_dir: /tmp
    user: "65534:65534"
    environment: {A: "1"}
    env_file: box.env
    read_only: true
    tmpfs: [/tmp]
    volumes:
      - ./shared:/shared:ro
    deploy:
      replicas: 2
      resources:
        limits: {memory: 64m, cpus: "0.5", pids: 50}
    stop_signal: SIGINT
    stop_grace_period: 2s
  writer:
    image: cilo-test/testsvc
    command: ["sleep"]
    volumes: ["cache:/cache"]
  seeded:
    image: cilo-test/testsvc
    command: ["sleep"]
    volumes:
      - tools:/bin
      - scratch:/tmp
      - {type: volume, source: plain, target: /data, volume: {nocopy: true}}
volumes:
  cache: {}
  tools: {}
  scratch: {}
  plain: {}
`

func TestServiceOptions(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	env := h.newEnv(0, "opts", map[string]string{"compose.yaml": optionsStack, "box.env": "B=2\n", "shared/hello.txt": "hi"})
	svcs, err := h.engine.Up(ctx, env)
	if err != nil {
		t.Fatalf("up: %v\n%s", err, h.logs)
	}
	if len(svcs) != 3 || len(svcs[0].Addrs) != 2 {
		t.Fatalf("services = %+v, want box with 2 replicas, seeded and writer", svcs)
	}
	gw := env.Gateway.String()
	tests := []struct {
		name    string
		service string
		cmd     string
		want    string // output must contain it
		fails   bool
	}{
		{"user", "box", "id -u", "65534", false},
		{"working_dir", "box", "pwd", "/tmp", false},
		{"environment_and_env_file", "box", "echo $A$B", "12", false},
		{"bind_mount_from_workspace", "box", "cat /shared/hello.txt", "hi", false},
		{"bind_mount_read_only", "box", "touch /shared/x", "", true},
		{"read_only_rootfs", "box", "touch /x", "", true},
		{"tmpfs_writable", "box", "touch /tmp/x && echo ok", "ok", false},
		{"hostname_is_service", "box", "hostname", "box", false},
		{"resolv_conf_points_at_env_dns", "box", "cat /etc/resolv.conf", "nameserver " + gw + "\nsearch opts.test", false},
		{"hosts_name_all_services", "box", "cat /etc/hosts", "writer writer.opts.test", false},
		// New named volumes start with the image's content and modes
		// (a shell still runs with a volume over /bin), unless nocopy.
		{"volume_copies_image_content", "seeded", "ls /bin/busybox && ls -ld /tmp", "drwxrwxrwt", false},
		{"volume_nocopy_is_empty", "seeded", "ls -ld /data && ls -A /data | wc -l", "drwxr-xr-x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := h.exec(env, tt.service, "/bin/sh", "-c", tt.cmd)
			if tt.fails {
				if err == nil {
					t.Fatalf("%q succeeded: %q", tt.cmd, out)
				}
				return
			}
			if err != nil || !strings.Contains(out, tt.want) {
				t.Fatalf("%q = %q, %v; want it to contain %q", tt.cmd, out, err, tt.want)
			}
		})
	}
	t.Run("exec_with_tty_and_status", func(t *testing.T) {
		var out bytes.Buffer
		code, err := h.engine.Exec(ctx, env, ExecOptions{Service: "box", Replica: 2, TTY: true,
			Args: []string{"/bin/sh", "-c", "test -t 0 && test -t 1 && echo tty; exit 7"}, Stdin: strings.NewReader(""), Stdout: &out})
		if err != nil || code != 7 || !strings.Contains(out.String(), "tty") {
			t.Fatalf("exec = %d, %v, output %q; want 7 and a terminal", code, err, out.String())
		}
	})
	t.Run("cgroup_limits_in_spec", func(t *testing.T) {
		ctr, err := h.client.LoadContainer(h.ctx, containerID("app", "opts", "box", 2))
		if err != nil {
			t.Fatal(err)
		}
		spec, err := ctr.Spec(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := spec.Linux.Resources
		if r.Memory == nil || *r.Memory.Limit != 64<<20 || r.CPU == nil || *r.CPU.Quota != 50000 || r.Pids == nil || r.Pids.Limit != 50 {
			t.Fatalf("resources = %+v", r)
		}
		// The kernel enforces it: the task's pids cgroup says 50.
		task, err := ctr.Task(h.ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := pidsMax(t, task.Pid()); got != "50" {
			t.Errorf("pids.max of the task's cgroup = %q, want 50", got)
		}
		labels, _ := ctr.Labels(h.ctx)
		for k, want := range map[string]string{labelStopSig: "SIGINT", labelStopGrace: "2s", composeProject: "app", composeService: "box", composeNumber: "2"} {
			if labels[k] != want {
				t.Errorf("label %s = %q, want %q", k, labels[k], want)
			}
		}
	})
	t.Run("logs_of_both_replicas", func(t *testing.T) {
		b, _ := os.ReadFile(h.engine.logPath("app", "opts", "box"))
		if strings.Count(string(b), "started") != 2 {
			t.Fatalf("box log = %q", b)
		}
	})
	t.Run("named_volume_survives_down_not_remove", func(t *testing.T) {
		if _, err := h.exec(env, "writer", "/bin/sh", "-c", "echo kept > /cache/f"); err != nil {
			t.Fatal(err)
		}
		if err := h.engine.Down(ctx, env); err != nil {
			t.Fatal(err)
		}
		if _, err := h.engine.Up(ctx, env); err != nil {
			t.Fatal(err)
		}
		if out, err := h.exec(env, "writer", "cat", "/cache/f"); err != nil || out != "kept\n" {
			t.Fatalf("after down/up: %q, %v", out, err)
		}
		if err := h.engine.Remove(ctx, env); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(h.opts.StateDir, "volumes", "app", "opts")); !os.IsNotExist(err) {
			t.Fatalf("volume survived remove: %v", err)
		}
		if left := h.leftovers(env); len(left) != 0 {
			t.Fatalf("left: %v", left)
		}
	})
}

func TestDependsOnFailures(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name    string
		compose string
		want    string
		started []string // service:status of the containers, sorted
	}{
		{"job_exits_non_zero", `
services:
  job: {image: cilo-test/testsvc, command: ["exit", "3"]}
  api:
    image: cilo-test/testsvc
    depends_on: {job: {condition: service_completed_successfully}}
`, "exited with status 3", []string{"api:created", "job:stopped"}},
		{"never_healthy", `
services:
  db:
    image: cilo-test/testsvc
    command: ["sleep"]
    healthcheck: {test: ["CMD", "/bin/false"], interval: 100ms, retries: 3}
  api:
    image: cilo-test/testsvc
    depends_on: {db: {condition: service_healthy}}
`, "unhealthy", []string{"api:created", "db:running"}},
		{"healthy_without_healthcheck", `
services:
  db: {image: cilo-test/testsvc}
  api:
    image: cilo-test/testsvc
    depends_on: {db: {condition: service_healthy}}
`, "no healthcheck", []string{"api:created", "db:running"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := h.newEnv(i, "dep"+string(rune('a'+i)), map[string]string{"compose.yaml": tt.compose})
			_, err := h.engine.Up(context.Background(), env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), `service "api" not started`) {
				t.Errorf("err %v does not say api was not started", err)
			}
			ps, _ := h.engine.Ps(context.Background(), env)
			var got []string
			for _, c := range ps {
				got = append(got, c.Service+":"+c.Status)
			}
			if strings.Join(got, " ") != strings.Join(tt.started, " ") {
				t.Fatalf("containers = %v, want %v", got, tt.started)
			}
		})
	}
}

// pidsMax reads pids.max of pid's cgroup, v1 or v2.
func pidsMax(t *testing.T, pid uint32) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var path string
		switch {
		case parts[1] == "pids":
			path = filepath.Join("/sys/fs/cgroup/pids", parts[2], "pids.max")
		case parts[0] == "0" && parts[1] == "":
			path = filepath.Join("/sys/fs/cgroup", parts[2], "pids.max")
		default:
			continue
		}
		if v, err := os.ReadFile(path); err == nil {
			return strings.TrimSpace(string(v))
		}
	}
	return ""
}

// TestConcurrentUpOfOneEnv: two cilo processes (two engines) bring up one
// env at once; both succeed and the env has each container once.
func TestConcurrentUpOfOneEnv(t *testing.T) {
	h := newHarness(t)
	env := h.newEnv(0, "twice", map[string]string{"compose.yaml": `
services:
  web: {image: cilo-test/testsvc, command: ["http", "-listen", ":80"], deploy: {replicas: 2}}
  db: {image: cilo-test/testsvc, command: ["http", "-listen", ":5432"]}
`})
	other := New(h.opts)
	defer other.Close()
	errs := make(chan error, 2)
	for _, e := range []*Engine{h.engine, other} {
		go func() {
			_, err := e.Up(context.Background(), env)
			errs <- err
		}()
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ps, err := h.engine.Ps(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range ps {
		got = append(got, fmt.Sprintf("%s/%d:%s", c.Service, c.Replica, c.Status))
	}
	if want := "db/1:running web/1:running web/2:running"; strings.Join(got, " ") != want {
		t.Fatalf("containers = %v, want %s", got, want)
	}
}

// TestStopSignalAndGracePeriod: Down sends stop_signal, and kills a
// service that ignores it once stop_grace_period is over.
func TestStopSignalAndGracePeriod(t *testing.T) {
	h := newHarness(t)
	env := h.newEnv(0, "stop", map[string]string{"compose.yaml": `
services:
  polite:
    image: cilo-test/testsvc
    entrypoint: ["/bin/sh", "-c", "trap 'echo got INT; exit 0' INT; echo ready; while true; do sleep 0.1; done"]
    stop_signal: SIGINT
  stubborn:
    image: cilo-test/testsvc
    entrypoint: ["/bin/sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"]
    stop_grace_period: 1500ms
`})
	if _, err := h.engine.Up(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	// Both shells must have set their traps.
	for _, svc := range []string{"polite", "stubborn"} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(h.engine.logPath("app", "stop", svc))
			if strings.Contains(string(b), "ready") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never got ready", svc)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	start := time.Now()
	if err := h.engine.Down(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took < 1500*time.Millisecond || took > 6*time.Second {
		t.Errorf("down took %s; want the 1.5 s grace period of stubborn, then SIGKILL", took)
	}
	if b, _ := os.ReadFile(h.engine.logPath("app", "stop", "polite")); !strings.Contains(string(b), "got INT") {
		t.Errorf("polite did not get SIGINT; log %q", b)
	}
	if left := h.leftovers(env); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
}

// TestBuildThroughBuildkit drives the build: path with a stand-in for
// buildctl (a script printing a prebuilt archive, as `buildctl build
// --output type=docker` does) and a socket standing for buildkitd: the
// image is named <project>-<service>, built once and shared by envs.
func TestBuildThroughBuildkit(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	archive := filepath.Join(dir, "built.tar")
	spec := testimages.Spec{Ref: "app-web", Files: []testimages.File{{Path: "/testsvc", Source: filepath.Join(filepath.Dir(testArchive), "testsvc"), Mode: 0o755}},
		Entrypoint: []string{"/testsvc"}, Cmd: []string{"http", "-listen", ":80", "-name", "built"}}
	if err := testimages.WriteArchiveFile(archive, spec); err != nil {
		t.Fatal(err)
	}
	calls := filepath.Join(dir, "calls")
	script := "#!/bin/sh\necho \"$@\" >> " + calls + "\ncat " + archive + "\n"
	if err := os.WriteFile(filepath.Join(dir, "buildctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "buildkitd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	t.Setenv("BUILDKIT_HOST", "unix://"+sock)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))

	compose := "services:\n  web:\n    build:\n      context: ./web\n      args: {V: \"1\"}\n"
	files := map[string]string{"compose.yaml": compose, "web/Dockerfile": "FROM scratch\n"}
	for i, name := range []string{"b1", "b2"} {
		env := h.newEnv(i, name, files)
		if _, err := h.engine.Up(context.Background(), env); err != nil {
			t.Fatalf("up %s: %v", name, err)
		}
		body, err := eventually("", tcp4(h.net.Pool().Host(i, 10).String()+":80"), "/")
		if err != nil || !strings.HasPrefix(body, "built") {
			t.Fatalf("%s: built service answered %q, %v", name, body, err)
		}
	}
	b, _ := os.ReadFile(calls)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 1 {
		t.Fatalf("buildctl ran %d times, want once (the second env uses the built image): %q", len(lines), b)
	}
	for _, want := range []string{"--frontend dockerfile.v0", "/web", "type=docker,name=docker.io/library/app-web:latest", "build-arg:V=1"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("buildctl args %q lack %q", lines[0], want)
		}
	}
}

// TestTTYService: tty: true gives the service a terminal (a shell with no
// input stays up, as in docker compose) and its output still reaches the
// log, through the logging binary.
func TestTTYService(t *testing.T) {
	h := newHarness(t)
	env := h.newEnv(0, "tty", map[string]string{"compose.yaml": `
services:
  shell:
    image: cilo-test/testsvc
    entrypoint: ["/bin/sh"]
    tty: true
    stdin_open: true
    stop_grace_period: 1s  # sh as pid 1 ignores SIGTERM
  probe:
    image: cilo-test/testsvc
    entrypoint: ["/bin/sh", "-c", "test -t 1 && echo has-a-tty; exec /testsvc sleep"]
    tty: true
`})
	if _, err := h.engine.Up(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(h.logs.String(), "tty") {
		t.Errorf("tty warned about: %s", h.logs)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(h.engine.logPath("app", "tty", "probe"))
		if strings.Contains(string(b), "has-a-tty") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe log = %q, want has-a-tty", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	ps, err := h.engine.Ps(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ps {
		if c.Status != "running" {
			t.Errorf("%s is %s, want running", c.Service, c.Status)
		}
	}
	if err := h.engine.Down(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if left := h.leftovers(env); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
}
