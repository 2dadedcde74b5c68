package compose

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/cilo-dev/cilo/compose/supervise"
	"github.com/cilo-dev/cilo/nsnet"
	"github.com/cilo-dev/cilo/nsnet/nsfs"
	"github.com/cilo-dev/cilo/sandbox/state"
	testimages "github.com/cilo-dev/cilo/test/images"
)

// testImage is the test program's image, loaded into each test's own
// containerd namespace.
const testImage = "cilo-test/testsvc:latest"

var testArchive string

func TestMain(m *testing.M) {
	// The test binary is the logging binary of tty services (LogBinary
	// defaults to this executable), as cilo-compose is in production.
	if len(os.Args) == 3 && os.Args[1] == LoggerCommand {
		if err := RunLogger(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// And it is the restart supervisor, as cilo-compose is.
	if len(os.Args) == 2 && os.Args[1] == supervise.Command {
		if err := runSupervisor(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := func() int {
		if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "cilo-compose-test-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			testArchive, err = testimages.TestServiceArchive(context.Background(), testImage, dir)
			if err != nil {
				fmt.Fprintln(os.Stderr, "build test image:", err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// superviseEnv carries a test's engine options to the test binary run as
// that test's restart supervisor.
const superviseEnv = "CILO_COMPOSE_TEST_SUPERVISE"

// superviseConfig is the part of Options the supervisor needs.
type superviseConfig struct {
	Address, Namespace, Prefix string
	Pool                       netip.Prefix
	StateDir, RunDir           string
}

// runSupervisor runs the restart supervisor of the test whose options are
// in superviseEnv, with an engine made from them, until SIGTERM.
func runSupervisor() error {
	var c superviseConfig
	if err := json.Unmarshal([]byte(os.Getenv(superviseEnv)), &c); err != nil {
		return fmt.Errorf("read %s: %w", superviseEnv, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	e := New(Options{Address: c.Address, Namespace: c.Namespace, Prefix: c.Prefix, Pool: c.Pool, StateDir: c.StateDir, RunDir: c.RunDir})
	defer e.Close()
	return supervise.Run(ctx, supervise.Options{
		Address: c.Address, Namespace: c.Namespace, RunDir: c.RunDir, Restarter: e,
		Logf: func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000")+" "+f+"\n", a...)
		},
	})
}

// harness is one test's private world: its own containerd namespace,
// name prefix, slice of the address pool, state and run dirs, and its own
// restart supervisor (this test binary).
type harness struct {
	t      *testing.T
	net    *nsnet.Network
	engine *Engine
	opts   Options
	client *containerd.Client
	ctx    context.Context // in the test's containerd namespace
	logs   *strings.Builder
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, nftables, containerd); CI runs it as root")
	}
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	address := os.Getenv("CONTAINERD_ADDRESS")
	if address == "" {
		address = "/run/containerd/containerd.sock"
	}
	return newHarnessAt(t, address)
}

// newHarnessAt is newHarness against the containerd at address.
func newHarnessAt(t *testing.T, address string) *harness {
	t.Helper()
	requireRoot(t)
	var b [4]byte
	rand.Read(b[:])
	r := binary.BigEndian.Uint32(b[:])
	prefix := fmt.Sprintf("c%03x", r%4096)
	// 16 subnets: the bad-input test makes an env per case.
	pool := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 232, byte((r >> 12) % 16 * 16), 0}), 20)
	ns := fmt.Sprintf("cilo-test-%08x", r)
	client, err := containerd.New(address, containerd.WithTimeout(3*time.Second))
	if err == nil {
		vctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = client.Version(vctx)
		cancel()
	}
	if err != nil {
		t.Fatalf("containerd is not running at %s (%v): run sudo scripts/ensure-containerd.sh", address, err)
	}
	ctx := namespaces.WithNamespace(context.Background(), ns)
	n, err := nsnet.New(prefix, pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.EnsureHost(context.Background()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logs := &strings.Builder{}
	opts := Options{
		Address: address, Namespace: ns, Prefix: prefix, Pool: pool,
		StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), DNSSuffix: "test",
		Logf: func(f string, a ...any) { fmt.Fprintf(logs, f+"\n", a...) },
	}
	sc, err := json.Marshal(superviseConfig{address, ns, prefix, pool, opts.StateDir, opts.RunDir})
	if err != nil {
		t.Fatal(err)
	}
	opts.Supervisor = &supervise.Launcher{
		RunDir:  opts.RunDir,
		LogFile: filepath.Join(opts.StateDir, "logs", "supervise.log"),
		Command: []string{os.Args[0], supervise.Command},
		Env:     []string{superviseEnv + "=" + string(sc)},
	}
	h := &harness{t: t, net: n, opts: opts, client: client, ctx: ctx, logs: logs}
	h.engine = New(opts)
	t.Cleanup(func() {
		h.engine.Close()
		h.stopSupervisor()
		if t.Failed() {
			t.Logf("restart supervisor's log:\n%s", h.supervisorLog())
		}
		h.removeNamespace()
		client.Close()
		if err := n.TeardownHost(context.Background()); err != nil {
			t.Errorf("teardown host: %v", err)
		}
	})
	if _, err := h.engine.LoadImage(context.Background(), testArchive); err != nil {
		t.Fatal(err)
	}
	return h
}

// supervisorPID is the pid of the test's restart supervisor, 0 when none
// runs (it removes its pid file when it exits).
func (h *harness) supervisorPID() int {
	b, err := os.ReadFile(filepath.Join(h.opts.RunDir, "supervise.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stopSupervisor ends the test's restart supervisor, if one runs, and
// waits until it has.
func (h *harness) stopSupervisor() {
	pid := h.supervisorPID()
	if pid <= 1 {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 200 && h.supervisorPID() == pid; i++ {
		time.Sleep(25 * time.Millisecond)
	}
	if h.supervisorPID() == pid {
		h.t.Errorf("restart supervisor %d still runs 5 s after SIGTERM", pid)
	}
}

func (h *harness) supervisorLog() string {
	b, _ := os.ReadFile(h.opts.Supervisor.(*supervise.Launcher).LogFile)
	return string(b)
}

// removeNamespace deletes everything in the test's containerd namespace
// and the namespace itself.
func (h *harness) removeNamespace() {
	ctx := context.Background()
	cs, _ := h.client.Containers(h.ctx)
	for _, c := range cs {
		if task, err := c.Task(h.ctx, nil); err == nil {
			task.Delete(h.ctx, containerd.WithProcessKill)
		}
		c.Delete(h.ctx, containerd.WithSnapshotCleanup)
	}
	imgs, _ := h.client.ImageService().List(h.ctx)
	for i, img := range imgs {
		var opts []images.DeleteOpt
		if i == len(imgs)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		h.client.ImageService().Delete(h.ctx, img.Name, opts...)
	}
	var err error
	for i := 0; i < 50; i++ {
		if err = h.client.NamespaceService().Delete(ctx, namespaceOf(h.ctx)); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.t.Errorf("delete containerd namespace %s: %v", namespaceOf(h.ctx), err)
}

func namespaceOf(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

// newEnv creates env name at pool index i with a workspace holding files.
func (h *harness) newEnv(i int, name string, files map[string]string) *state.Env {
	t := h.t
	t.Helper()
	ws := filepath.Join(t.TempDir(), name)
	for p, data := range files {
		full := filepath.Join(ws, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	netnsName := fmt.Sprintf("%s-app-%s", h.opts.Prefix, name)
	l := h.net.Link(i, netnsName)
	env := &state.Env{Project: "app", Name: name, Index: i, Subnet: l.Subnet, Gateway: l.Gateway, IP: l.IP,
		Netns: netnsName, Bridge: l.Bridge, Workspace: ws}
	t.Cleanup(func() {
		if err := h.engine.Remove(context.Background(), env); err != nil {
			t.Errorf("remove services of env %s: %v", name, err)
		}
		if err := h.net.Delete(context.Background(), l); err != nil {
			t.Errorf("delete env %s: %v", name, err)
		}
	})
	if err := h.net.Create(context.Background(), l, "cilo-test:"+t.Name()); err != nil {
		t.Fatal(err)
	}
	return env
}

// leftovers lists what the engine left of env: containers, tasks,
// snapshots, namespaces and veths.
func (h *harness) leftovers(env *state.Env) []string {
	var out []string
	mine := "app_" + env.Name + "_"
	cs, _ := h.client.Containers(h.ctx)
	for _, c := range cs {
		if strings.HasPrefix(c.ID(), mine) {
			out = append(out, "container "+c.ID())
		}
	}
	resp, err := h.client.TaskService().List(h.ctx, nil)
	if err == nil {
		for _, task := range resp.Tasks {
			if strings.HasPrefix(task.ID, mine) {
				out = append(out, "task "+task.ID)
			}
		}
	}
	h.client.SnapshotService(snapshotter).Walk(h.ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive && strings.HasPrefix(info.Name, mine) {
			out = append(out, "snapshot "+info.Name)
		}
		return nil
	})
	nss, _ := nsnet.Netnses(h.opts.Prefix + "-app-" + env.Name + "-")
	for _, n := range nss {
		out = append(out, "netns "+n)
	}
	links, _ := h.net.Links()
	for _, l := range links {
		if strings.HasPrefix(l, fmt.Sprintf("%ss%dx", h.opts.Prefix, env.Index)) {
			out = append(out, "veth "+l)
		}
	}
	return out
}

// dialIn connects to addr from inside netns (the host when empty) and
// returns the HTTP body of GET /.
func dialIn(netns string, dial func() (net.Conn, error)) (string, error) {
	return getIn(netns, dial, "/")
}

// getIn is dialIn for another path.
func getIn(netns string, dial func() (net.Conn, error), path string) (string, error) {
	var body string
	get := func() error {
		c, err := dial()
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("GET " + path + " HTTP/1.0\r\n\r\n")); err != nil {
			return err
		}
		b := make([]byte, 4096)
		var all []byte
		for {
			k, err := c.Read(b)
			all = append(all, b[:k]...)
			if err != nil {
				break
			}
		}
		_, rest, ok := strings.Cut(string(all), "\r\n\r\n")
		if !ok {
			return errors.New("no HTTP response")
		}
		body = rest
		return nil
	}
	if netns == "" {
		return body, get()
	}
	return body, nsfs.Do(netns, get)
}

func tcp4(addr string) func() (net.Conn, error) {
	return func() (net.Conn, error) { return net.DialTimeout("tcp4", addr, 2*time.Second) }
}

// v6First tries [::1] first, then 127.0.0.1, as clients do that get ::1
// first for localhost.
func v6First(port int) func() (net.Conn, error) {
	return func() (net.Conn, error) {
		if c, err := net.DialTimeout("tcp6", fmt.Sprintf("[::1]:%d", port), 2*time.Second); err == nil {
			return c, nil
		}
		return net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), 2*time.Second)
	}
}

// eventually retries getIn for a while: a started service may not listen
// yet (generous, for loaded CI machines).
func eventually(netns string, dial func() (net.Conn, error), path string) (string, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		body, err := getIn(netns, dial, path)
		if err == nil || time.Now().After(deadline) {
			return body, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
