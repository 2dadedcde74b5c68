package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilo-dev/cilo/nsnet"
	"github.com/cilo-dev/cilo/nsnet/nsfs"
)

// coreGroup measures the env core: the cost of running a command in an
// existing env against `ip netns exec`, and creating 250 envs.
func coreGroup() Group {
	return Group{Name: "core", Command: "sudo go run ./test/bench -only core", Run: runCore}
}

// benchWorld is a private cilo installation for one benchmark group: its
// own state root, prefix and pool, torn down afterwards.
type benchWorld struct {
	env     *Env
	root    string
	project string
	prefix  string
	pool    netip.Prefix
	vars    []string
}

func newBenchWorld(env *Env, prefix, pool string) (*benchWorld, error) {
	root, err := os.MkdirTemp("/var/tmp", "cilo-bench-"+prefix+"-")
	if err != nil {
		return nil, err
	}
	w := &benchWorld{env: env, root: root, prefix: prefix, pool: netip.MustParsePrefix(pool)}
	w.project = filepath.Join(root, "project")
	if err := os.MkdirAll(w.project, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(w.project, "main.go"), []byte("package main\n"), 0o644); err != nil {
		return nil, err
	}
	git := exec.Command("sh", "-c", "git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm init")
	git.Dir = w.project
	if out, err := git.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("git init: %v: %s", err, out)
	}
	dnsPort, err := freeUDPPort()
	if err != nil {
		return nil, err
	}
	w.vars = append(os.Environ(),
		"CILO_STATE_DIR="+filepath.Join(root, "state"),
		"CILO_RUN_DIR="+filepath.Join(root, "run"),
		"CILO_PREFIX="+prefix,
		"CILO_POOL="+pool,
		// The world's own DNS server on a loopback port of its own,
		// forwarding nowhere; close stops it.
		fmt.Sprintf("CILO_DNS_ADDR=127.0.0.1:%d", dnsPort),
		"CILO_DNS_UPSTREAMS=127.0.0.1:9",
		"CILO_CONFIG=/dev/null",
	)
	return w, nil
}

// command is cilo with the world's config, run in its project.
func (w *benchWorld) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, w.env.Cilo, args...)
	cmd.Dir, cmd.Env = w.project, w.vars
	return cmd
}

func (w *benchWorld) cilo(ctx context.Context, args ...string) error {
	if out, err := w.command(ctx, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("cilo %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// close destroys every env, the host pieces of the world's prefix and its
// DNS server.
func (w *benchWorld) close() {
	ctx := context.Background()
	if err := w.cilo(ctx, "destroy", "--all", "--force"); err != nil {
		w.env.Logf("cleanup: %v", err)
	}
	if n, err := nsnet.New(w.prefix, w.pool); err == nil {
		n.TeardownHost(ctx)
	}
	if b, err := os.ReadFile(filepath.Join(w.root, "run", "dns.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	os.RemoveAll(w.root)
}

// freeUDPPort asks the kernel for a loopback port nobody uses now.
func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

func runCore(ctx context.Context, env *Env) ([]Row, error) {
	logHostNetwork(env)
	w, err := newBenchWorld(env, "bco", "10.238.0.0/16")
	if err != nil {
		return nil, err
	}
	defer w.close()

	rows, err := benchRunTrue(ctx, w)
	if err != nil {
		return nil, err
	}
	create, err := benchCreate250(ctx, w)
	if err != nil {
		return nil, err
	}
	if err := w.cilo(ctx, "destroy", "--all", "--force"); err != nil {
		return nil, err
	}
	// The kernel tears namespaces down after destroy returns; each phase
	// starts on a machine that has finished.
	settleCPU(ctx, env)
	floor, err := benchNetFloor(ctx, env)
	if err != nil {
		return nil, err
	}
	settleCPU(ctx, env)
	rows = append(rows, create.rows(floor)...)
	batched, err := benchCreateBatched(ctx, w)
	if err != nil {
		return nil, err
	}
	return append(rows, batched...), nil
}

// logHostNetwork says what networking the host already holds: every
// interface and namespace, other worlds' envs included, makes the
// kernel's per-create work (and the route dumps) larger, so figures from
// a crowded host are not comparable with a clean one's.
func logHostNetwork(env *Env) {
	ifs, err := net.Interfaces()
	if err != nil {
		env.Logf("host: %v", err)
		return
	}
	nses, _ := os.ReadDir(nsfs.Dir)
	env.Logf("host before the run: %d interfaces, %d pinned network namespaces", len(ifs), len(nses))
}

// benchRunTrue alternates `cilo run true <env>` and `ip netns exec <ns>
// true` so that both see the same machine load.
func benchRunTrue(ctx context.Context, w *benchWorld) ([]Row, error) {
	if err := w.cilo(ctx, "create", "hot"); err != nil {
		return nil, err
	}
	ns := w.prefix + "-project-hot"
	const n = 200
	var cilo, anchor []time.Duration
	for i := 0; i < n; i++ {
		c, err := timeCmdEnv(ctx, w, w.env.Cilo, "run", "true", "hot")
		if err != nil {
			return nil, err
		}
		a, err := timeCmdEnv(ctx, w, "ip", "netns", "exec", ns, "true")
		if err != nil {
			return nil, err
		}
		cilo, anchor = append(cilo, c), append(anchor, a)
	}
	p50c, p50a := ms(percentile(cilo, 50)), ms(percentile(anchor, 50))
	w.env.Logf("cilo run true: p50 %.2f ms, ip netns exec true: p50 %.2f ms", p50c, p50a)
	return []Row{{
		Metric: "cilo run true <env> (existing env), p50 of 200", Unit: "ms",
		Cilo: p50c, AnchorName: "ip netns exec NS true", Anchor: p50a,
		Goal: "ratio <= 1.5", Met: p50c <= 1.5*p50a,
	}}, nil
}

func timeCmdEnv(ctx context.Context, w *benchWorld, argv ...string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = w.project, w.vars
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%v: %w: %s", argv, err, out)
	}
	return time.Since(start), nil
}

// Creates are timed as a user makes many: 250 envs, 20 at a time.
const (
	createTotal = 250
	createWave  = 20
)

// inWaves runs do(i) for i in [0, createTotal), createWave at a time (a
// wave starts when the last one has ended), and returns each duration.
func inWaves(do func(i int) (time.Duration, error)) ([]time.Duration, error) {
	var (
		mu    sync.Mutex
		times []time.Duration
	)
	for start := 0; start < createTotal; start += createWave {
		var wg sync.WaitGroup
		errs := make(chan error, createWave)
		for i := start; i < start+createWave && i < createTotal; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := do(i)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				times = append(times, d)
				mu.Unlock()
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return nil, err
		}
	}
	return times, nil
}

// createTimes is what benchCreate250 measured.
type createTimes struct {
	times        []time.Duration
	kernelPerEnv float64 // KB
}

// benchCreate250 creates 250 envs, 20 at a time, timing each `cilo create`,
// and reads the kernel's own memory before and after.
func benchCreate250(ctx context.Context, w *benchWorld) (createTimes, error) {
	before, err := kernelMemoryKB()
	if err != nil {
		return createTimes{}, err
	}
	times, err := inWaves(func(i int) (time.Duration, error) {
		return timeCmdEnv(ctx, w, w.env.Cilo, "create", fmt.Sprintf("e%03d", i))
	})
	if err != nil {
		return createTimes{}, err
	}
	after, err := kernelMemoryKB()
	if err != nil {
		return createTimes{}, err
	}
	c := createTimes{times: times, kernelPerEnv: float64(after-before) / createTotal}
	w.env.Logf("create x%d: p50 %.1f ms p99 %.1f ms, kernel memory %.0f KB/env", createTotal,
		ms(percentile(times, 50)), ms(percentile(times, 99)), c.kernelPerEnv)
	return c, nil
}

// rows reports the creates next to floor, the same envs' network alone.
func (c createTimes) rows(floor []time.Duration) []Row {
	p50, p99 := ms(percentile(c.times, 50)), ms(percentile(c.times, 99))
	const floorName = "netfloor: the network alone, a process per env"
	return []Row{
		{Metric: "cilo create, 250 envs 20 at a time: p50", Unit: "ms", Cilo: p50,
			AnchorName: floorName, Anchor: ms(percentile(floor, 50)), Goal: "-", Met: true},
		{Metric: "cilo create, 250 envs 20 at a time: p99", Unit: "ms", Cilo: p99,
			AnchorName: floorName, Anchor: ms(percentile(floor, 99)), Goal: "p99 <= 100 ms", Met: p99 <= 100},
		{Metric: "kernel memory per env (Slab+KernelStack+PageTables, 250 envs alive)", Unit: "KB",
			Cilo: c.kernelPerEnv, Goal: "-", Met: true},
	}
}

// benchNetFloor times the floor under a create: test/bench/netfloor makes
// one env's namespace, bridge and veth through cilo's own nsnet code and
// nothing else, one process per env, 250 envs 20 at a time like the
// creates. Its prefix and pool are its own; everything it made is removed.
func benchNetFloor(ctx context.Context, env *Env) (times []time.Duration, err error) {
	const prefix, pool = "bfl", "10.237.0.0/16"
	dir, err := os.MkdirTemp("", "cilo-bench-netfloor-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "netfloor")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./test/bench/netfloor")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build netfloor: %w: %s", err, out)
	}
	n, err := nsnet.New(prefix, netip.MustParsePrefix(pool))
	if err != nil {
		return nil, err
	}
	netns := func(i int) string { return fmt.Sprintf("%s-floor-%d", prefix, i) }
	defer func() {
		for i := range createTotal {
			if derr := n.Delete(ctx, n.Link(i, netns(i))); derr != nil && err == nil {
				err = fmt.Errorf("remove netfloor env %d: %w", i, derr)
			}
		}
		if derr := n.TeardownHost(ctx); derr != nil && err == nil {
			err = derr
		}
	}()
	if err := n.EnsureHost(ctx); err != nil {
		return nil, err
	}
	times, err = inWaves(func(i int) (time.Duration, error) {
		cmd := exec.CommandContext(ctx, bin, prefix, pool, strconv.Itoa(i), netns(i))
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("netfloor %d: %w: %s", i, err, out)
		}
		return time.Since(start), nil
	})
	if err != nil {
		return nil, err
	}
	env.Logf("netfloor x%d: p50 %.1f ms p99 %.1f ms", createTotal, ms(percentile(times, 50)), ms(percentile(times, 99)))
	return times, nil
}

// benchCreateBatched creates 250 envs again, 20 names per `cilo create`
// call, and times each env from the start of its call to the line that
// reports it ready.
func benchCreateBatched(ctx context.Context, w *benchWorld) ([]Row, error) {
	var times []time.Duration
	for start := 0; start < createTotal; start += createWave {
		args := []string{"create"}
		for i := start; i < start+createWave && i < createTotal; i++ {
			args = append(args, fmt.Sprintf("b%03d", i))
		}
		cmd := w.command(ctx, args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		lines := bufio.NewScanner(out)
		for lines.Scan() {
			if strings.HasPrefix(lines.Text(), "created ") {
				times = append(times, time.Since(t0))
			}
		}
		if err := cmd.Wait(); err != nil {
			return nil, fmt.Errorf("%v: %w: %s", args, err, stderr.String())
		}
	}
	if len(times) != createTotal {
		return nil, fmt.Errorf("batched create: %d envs reported, want %d", len(times), createTotal)
	}
	p50, p99 := ms(percentile(times, 50)), ms(percentile(times, 99))
	w.env.Logf("create x%d, %d names per call: p50 %.1f ms p99 %.1f ms", createTotal, createWave, p50, p99)
	return []Row{
		{Metric: "cilo create a b c... (20 names per call), 250 envs: per env p50", Unit: "ms", Cilo: p50, Goal: "-", Met: true},
		{Metric: "cilo create a b c... (20 names per call), 250 envs: per env p99", Unit: "ms", Cilo: p99, Goal: "p99 <= 100 ms", Met: p99 <= 100},
	}, nil
}

// kernelMemoryKB is the kernel's own memory from /proc/meminfo: slab
// (namespaces, netdevs, mounts), kernel stacks and page tables.
func kernelMemoryKB() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var sum int64
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 {
			continue
		}
		switch strings.TrimSuffix(fields[0], ":") {
		case "Slab", "KernelStack", "PageTables":
			v, _ := strconv.ParseInt(fields[1], 10, 64)
			sum += v
		}
	}
	return sum, s.Err()
}
