// Package e2e drives the cilo binary end to end, as root, with real
// namespaces, bridges, nftables rules and mounts. Every test gets its own
// state root, name prefix and slice of the address pool, and removes what it
// made when it ends, pass or fail.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilo-dev/cilo/nsnet"
)

// ciloBin is built once in TestMain; the test binary itself doubles as the
// helper program run inside envs (see helper.go).
var ciloBin string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain(os.Args[1:]))
	}
	dir, err := os.MkdirTemp("", "cilo-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	ciloBin = filepath.Join(dir, "cilo")
	// cilo and, beside it, cilo-core and cilo-compose, as make build lays
	// them out.
	for _, b := range [][]string{
		{"build", "-o", ciloBin, "github.com/cilo-dev/cilo/cmd/cilo"},
		{"build", "-o", filepath.Join(dir, "cilo-core"), "github.com/cilo-dev/cilo/cmd/cilo-core"},
		{"build", "-tags", "cilo_compose", "-o", filepath.Join(dir, "cilo-compose"), "github.com/cilo-dev/cilo/cmd/cilo-core"},
	} {
		build := exec.Command("go", b...)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build cilo:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// world is one test's cilo installation: its own roots, prefix and pool,
// and a project to make envs of.
type world struct {
	t       *testing.T
	prefix  string
	pool    netip.Prefix
	root    string
	project string // source tree
	env     []string
}

func randUint32() uint32 {
	var b [4]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:])
}

// newWorld sets up a world with a pool of poolBits (e.g. 19 for 32 envs).
func newWorld(t *testing.T, poolBits int) *world {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root for namespaces and mounts; CI runs them as root")
	}
	r := randUint32()
	size := 1 << (24 - poolBits)
	third := int(r>>8) % (256 / size) * size
	w := &world{
		t:      t,
		prefix: fmt.Sprintf("e%03x", r%4096),
		pool:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(233 + r>>28%4), byte(third), 0}), poolBits),
	}
	w.root = t.TempDir()
	// The sudo-drop and no-privilege tests run as other users, who must
	// be able to walk into the workspaces (t.TempDir makes 0700 dirs).
	os.Chmod(w.root, 0o755)
	os.Chmod(filepath.Dir(w.root), 0o755)
	w.project = filepath.Join(w.root, "src", "demo-app")
	must(t, os.MkdirAll(filepath.Join(w.project, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(w.project, "README"), []byte("hello\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(w.project, "sub", "file"), []byte("x\n"), 0o644))
	git := exec.Command("sh", "-c", "git init -q -b main && git add -A && git -c user.name=t -c user.email=t@t commit -qm init")
	git.Dir = w.project
	if out, err := git.CombinedOutput(); err != nil {
		t.Fatalf("git init fixture: %v\n%s", err, out)
	}
	w.env = append(os.Environ(),
		"CILO_STATE_DIR="+filepath.Join(w.root, "state"),
		"CILO_RUN_DIR="+filepath.Join(w.root, "run"),
		"CILO_PREFIX="+w.prefix,
		"CILO_POOL="+w.pool.String(),
		// The world's own DNS server, started on demand by create,
		// on a loopback port of its own; cleanup stops it.
		fmt.Sprintf("CILO_DNS_ADDR=127.0.0.1:%d", 20000+r%30000),
		// Nothing is ever forwarded off the machine: the upstream is
		// a loopback port where nothing listens.
		"CILO_DNS_UPSTREAMS=127.0.0.1:9",
		"CILO_CONFIG=/dev/null",
	)
	t.Cleanup(w.cleanup)
	return w
}

// cleanup destroys every env of the world and the host-wide pieces of its
// prefix, then checks that nothing is left.
func (w *world) cleanup() {
	ctx := context.Background()
	out, _ := w.cilo(ctx, "", "list", "--all", "--json")
	var envs []struct{ Project, Name string }
	json.Unmarshal([]byte(out), &envs)
	for _, e := range envs {
		if o, err := w.cilo(ctx, "", "destroy", "--force", e.Project+"/"+e.Name); err != nil {
			w.t.Errorf("cleanup destroy %s: %v\n%s", e.Name, err, o)
		}
	}
	if n, err := nsnet.New(w.prefix, w.pool); err == nil {
		n.TeardownHost(ctx)
	}
	w.stopRun(dnsPIDFile)
	w.assertNothingLeft()
}

// Pid files of the world's background programs, in its run dir.
const (
	dnsPIDFile        = "dns.pid"       // the DNS server create starts
	supervisorPIDFile = "supervise.pid" // the restart supervisor up starts (gone when it exits)
)

// runPID is the pid in the world's run-dir pid file name, 0 without one.
func (w *world) runPID(name string) int {
	b, err := os.ReadFile(filepath.Join(w.root, "run", name))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stopRun ends the process of the world's pid file name, if one runs.
func (w *world) stopRun(name string) {
	if pid := w.runPID(name); pid > 1 {
		syscall.Kill(pid, syscall.SIGTERM)
	}
}

// assertNothingLeft checks that no namespace, interface or workspace
// watcher of this world survives.
func (w *world) assertNothingLeft() {
	w.t.Helper()
	if !w.waitWatchers(false) {
		w.t.Errorf("workspace watchers left running: %v", w.watchers())
	}
	nses, _ := nsnet.Netnses(w.prefix + "-")
	if len(nses) > 0 {
		w.t.Errorf("namespaces left behind: %v", nses)
	}
	n, _ := nsnet.New(w.prefix, w.pool)
	if links, _ := n.Links(); len(links) > 0 {
		w.t.Errorf("interfaces left behind: %v", links)
	}
}

// cilo runs the cilo binary in dir (the project when empty) and returns its
// combined output.
func (w *world) cilo(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := w.command(ctx, dir, args...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

func (w *world) command(ctx context.Context, dir string, args ...string) *exec.Cmd {
	if dir == "" {
		dir = w.project
	}
	cmd := exec.CommandContext(ctx, ciloBin, args...)
	cmd.Dir = dir
	cmd.Env = w.env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// mustCilo is cilo that fails the test on error; it returns stdout only.
func (w *world) mustCilo(args ...string) string {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := w.command(ctx, "", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		w.t.Fatalf("cilo %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// getCase is a GET run inside env: its body, or, with fails, no answer.
type getCase struct {
	name, env, url, want string
	fails                bool
}

// checkGets runs each case through `cilo run -e <env> -- <helper> get`.
func (w *world) checkGets(cases []getCase) {
	for _, tt := range cases {
		w.t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			args := append([]string{"run", "-e", tt.env, "--"}, helperArgv("get", tt.url)...)
			out, err := w.cilo(ctx, "", args...)
			if tt.fails {
				if err == nil {
					t.Fatalf("reached %s from %s: %q", tt.url, tt.env, out)
				}
				return
			}
			if err != nil || strings.TrimSpace(out) != tt.want {
				t.Fatalf("get %s in %s = %q, %v; want %q", tt.url, tt.env, out, err, tt.want)
			}
		})
	}
}
