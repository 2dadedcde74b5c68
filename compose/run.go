package compose

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/runtime/restart"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/signal"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cilo-dev/cilo/compose/supervise"
	"github.com/cilo-dev/cilo/nsnet"
	"github.com/cilo-dev/cilo/nsnet/nsfs"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// Up starts the compose services of env and waits for their depends_on
// conditions. An env without a compose file has no services: (nil, nil),
// and no containerd connection is made. Up is idempotent: running
// containers whose configuration did not change stay as they are. Every
// check that can fail on bad input (the file, ports, images, builds, the
// containerd connection) runs before anything is created.
func (e *Engine) Up(ctx context.Context, env *state.Env) ([]state.Service, error) {
	osEnv := os.Environ()
	if !HasComposeFile(env, osEnv) {
		return nil, nil
	}
	p, err := Load(ctx, env, osEnv)
	if errors.Is(err, ErrNoComposeFile) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, w := range Warnings(p) {
		e.logf("%s", w)
	}
	n, err := e.network()
	if err != nil {
		return nil, err
	}
	pl, err := makePlan(p, env, n.Pool(), e.opts.Prefix, e.opts.DNSSuffix)
	if err != nil {
		return nil, err
	}
	c, ctx, err := e.connect(ctx)
	if err != nil {
		return nil, err
	}
	if pl.restarts {
		release, err := e.acquireSupervisor(ctx)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	unlock, err := e.lockEnv(ctx, env)
	if err != nil {
		return nil, err
	}
	defer unlock()
	imgs, err := e.ensureImages(ctx, c, p)
	if err != nil {
		return nil, err
	}
	if err := e.removeOrphans(ctx, c, pl); err != nil {
		return nil, err
	}
	if err := nsnet.SetPortForwards(env.Netns, pl.forwards); err != nil {
		return nil, err
	}
	if err := e.startAll(ctx, c, pl, imgs); err != nil {
		return pl.services, err
	}
	return pl.services, nil
}

// errDependency marks a service that was not started because a dependency
// failed; Up reports the dependency's own error first.
var errDependency = errors.New("dependency failed")

// event is a condition of a service (started, healthy, completed) that
// dependents wait for; err says why it will never hold.
type event struct {
	once sync.Once
	ch   chan struct{}
	err  error
}

func newEvent() *event { return &event{ch: make(chan struct{})} }

func (ev *event) fire(err error) {
	ev.once.Do(func() { ev.err = err; close(ev.ch) })
}

func (ev *event) wait(ctx context.Context) error {
	select {
	case <-ev.ch:
		return ev.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serviceState is what the dependents of one service wait on. The
// healthy and completed conditions are checked lazily, once, by the first
// dependent that has to start: a dependent that already runs does not make
// Up probe its dependency again (depends_on gates starting, nothing else).
type serviceState struct {
	started *event // every replica runs, or why not

	// Set before started fires.
	checkHealthy   func() error
	checkCompleted func() error

	healthyOnce, completedOnce sync.Once
	healthyErr, completedErr   error
}

// wait blocks until the condition holds. errDependency means the service
// did not start (its own error is reported by itself).
func (st *serviceState) wait(ctx context.Context, condition string) error {
	if err := st.started.wait(ctx); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return errDependency
	}
	switch condition {
	case types.ServiceConditionHealthy:
		st.healthyOnce.Do(func() { st.healthyErr = st.checkHealthy() })
		return st.healthyErr
	case types.ServiceConditionCompletedSuccessfully:
		st.completedOnce.Do(func() { st.completedErr = st.checkCompleted() })
		return st.completedErr
	}
	return nil
}

// startAll starts every service as soon as its dependencies' conditions
// hold; independent services start in parallel.
func (e *Engine) startAll(ctx context.Context, c *containerd.Client, pl *plan, imgs map[string]containerd.Image) error {
	p := pl.project
	states := map[string]*serviceState{}
	for name := range p.Services {
		states[name] = &serviceState{started: newEvent()}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, name := range p.ServiceNames() {
		wg.Add(1)
		go func(s types.ServiceConfig) {
			defer wg.Done()
			if err := e.runService(ctx, c, pl, s, imgs[s.Name], states); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}(p.Services[name])
	}
	wg.Wait()
	// Root causes first, then the services that waited for them.
	sort.Slice(errs, func(i, j int) bool {
		di, dj := errors.Is(errs[i], errDependency), errors.Is(errs[j], errDependency)
		if di != dj {
			return dj
		}
		return errs[i].Error() < errs[j].Error()
	})
	return errors.Join(errs...)
}

func (e *Engine) runService(ctx context.Context, c *containerd.Client, pl *plan, s types.ServiceConfig, img containerd.Image, states map[string]*serviceState) (err error) {
	own := states[s.Name]
	defer func() {
		if err != nil {
			own.started.fire(err)
		}
	}()
	deps := make([]string, 0, len(s.DependsOn))
	for d := range s.DependsOn {
		deps = append(deps, d)
	}
	sort.Strings(deps)
	for _, dep := range deps {
		if _, ok := states[dep]; !ok && s.DependsOn[dep].Required {
			return fmt.Errorf("service %q depends on %q, which is not in the project (or not in the active profiles)", s.Name, dep)
		}
	}
	// Containers and their tasks are created at once, in parallel with
	// every other service (as docker compose creates before it starts);
	// only starting waits for the dependencies.
	var rs []*prepared
	needStart := false
	for _, r := range pl.replicas[s.Name] {
		p, err := e.prepareReplica(ctx, c, pl, s, r, img)
		if err != nil {
			return err
		}
		rs = append(rs, p)
		needStart = needStart || p.start
	}
	if needStart {
		for _, dep := range deps {
			st, ok := states[dep]
			if !ok {
				continue
			}
			cond := s.DependsOn[dep].Condition
			if err := st.wait(ctx, cond); err != nil {
				if errors.Is(err, errDependency) {
					return fmt.Errorf("service %q not started: dependency %q did not start: %w", s.Name, dep, errDependency)
				}
				return fmt.Errorf("service %q not started: dependency %q did not reach %s: %w", s.Name, dep, cond, err)
			}
		}
	}
	for _, p := range rs {
		if err := e.startPrepared(ctx, p, s); err != nil {
			return err
		}
	}
	own.checkHealthy = func() error {
		hc := healthcheckOf(s)
		if hc == nil {
			return fmt.Errorf("service %q has no healthcheck", s.Name)
		}
		for i, r := range rs {
			if err := e.waitHealthy(ctx, r.task, r.spec, hc); err != nil {
				return fmt.Errorf("service %q replica %d is unhealthy: %w", s.Name, i+1, err)
			}
		}
		return nil
	}
	own.checkCompleted = func() error {
		for i, r := range rs {
			select {
			case st := <-r.exitC:
				if st.ExitCode() != 0 {
					return fmt.Errorf("service %q replica %d exited with status %d (see cilo logs %s %s)", s.Name, i+1, st.ExitCode(), pl.env.Name, s.Name)
				}
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	own.started.fire(nil)
	return nil
}

// configHash identifies everything a replica's container is made from;
// a change recreates the container, as docker compose does.
func configHash(s types.ServiceConfig, r replica, img containerd.Image) string {
	b, _ := json.Marshal(struct {
		S     types.ServiceConfig
		Addr  string
		Netns string
		Image string
	}{s, r.addr.String(), r.netns, img.Target().Digest.String()})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// prepared is a replica whose container and task exist; start says the
// task still has to be started, resetRestarts that the container's
// restart count or stop mark is to be cleared before.
type prepared struct {
	ctr           containerd.Container
	task          containerd.Task
	exitC         <-chan containerd.ExitStatus
	spec          *specs.Spec
	start         bool
	resetRestarts bool
}

// prepareReplica makes replica r's container and task: an unchanged
// running container stays, an unchanged stopped one gets a new task,
// anything else is recreated.
func (e *Engine) prepareReplica(ctx context.Context, c *containerd.Client, pl *plan, s types.ServiceConfig, r replica, img containerd.Image) (*prepared, error) {
	hash := configHash(s, r, img)
	rundir := e.runDir(pl.env.Project, pl.env.Name, r.id)
	// Rewritten in place: running containers bind-mount these inodes and
	// see services added later.
	writeFiles := func() error {
		if err := os.MkdirAll(rundir, 0o755); err != nil {
			return fmt.Errorf("service %q: %w", s.Name, err)
		}
		for name, data := range map[string][]byte{
			"hosts":       pl.hostsFile(r, e.opts.DNSSuffix),
			"resolv.conf": pl.resolvConf(e.opts.DNSSuffix),
			"hostname":    []byte(hostnameOf(s) + "\n"),
		} {
			if err := os.WriteFile(filepath.Join(rundir, name), data, 0o644); err != nil {
				return fmt.Errorf("service %q: write %s: %w", s.Name, name, err)
			}
		}
		return nil
	}
	if err := writeFiles(); err != nil {
		return nil, err
	}
	ctr, err := c.LoadContainer(ctx, r.id)
	switch {
	case err == nil:
		labels, lerr := ctr.Labels(ctx)
		if lerr == nil && labels[labelHash] == hash && nsfs.Exists(r.netns) {
			return e.prepareTask(ctx, ctr, labels, pl, s)
		}
		// Removing the old container removes its run files too.
		if err := e.removeContainer(ctx, ctr); err != nil {
			return nil, err
		}
		if err := writeFiles(); err != nil {
			return nil, err
		}
	case !errdefs.IsNotFound(err):
		return nil, fmt.Errorf("service %q: load container %s: %w", s.Name, r.id, err)
	}
	// Leftovers of an interrupted run go first.
	if err := e.removeNetwork(ctx, r.netns, r.veth); err != nil {
		return nil, err
	}
	n, err := e.network()
	if err != nil {
		return nil, err
	}
	if err := nsfs.Create(r.netns); err != nil {
		return nil, fmt.Errorf("service %q: %w", s.Name, err)
	}
	link := n.Link(pl.env.Index, pl.env.Netns)
	label := fmt.Sprintf("cilo:%s/%s/%s", pl.env.Project, pl.env.Name, r.id)
	if err := n.Attach(ctx, link, r.netns, r.veth, r.addr, label); err != nil {
		nsfs.Delete(r.netns)
		return nil, fmt.Errorf("service %q: %w", s.Name, err)
	}
	specOpts, err := e.specOpts(ctx, c, pl, s, r, img, rundir)
	if err != nil {
		e.removeNetwork(context.WithoutCancel(ctx), r.netns, r.veth)
		return nil, err
	}
	ctr, err = c.NewContainer(ctx, r.id,
		containerd.WithImage(img),
		containerd.WithSnapshotter(snapshotter),
		containerd.WithNewSnapshot(r.id, img),
		containerd.WithContainerLabels(e.labels(pl, s, r, img, hash, rundir)),
		containerd.WithNewSpec(specOpts...),
	)
	if err != nil {
		e.removeNetwork(context.WithoutCancel(ctx), r.netns, r.veth)
		return nil, fmt.Errorf("service %q: create container %s: %w", s.Name, r.id, err)
	}
	return e.prepareTask(ctx, ctr, nil, pl, s)
}

// prepareTask creates the container's task unless one runs already.
// labels are the container's when it existed before this Up.
func (e *Engine) prepareTask(ctx context.Context, ctr containerd.Container, labels map[string]string, pl *plan, s types.ServiceConfig) (*prepared, error) {
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return nil, fmt.Errorf("service %q: read spec of %s: %w", s.Name, ctr.ID(), err)
	}
	p := &prepared{ctr: ctr, spec: spec}
	if err := leaveRestartMonitor(ctx, ctr, labels); err != nil {
		return nil, fmt.Errorf("service %q: %w", s.Name, err)
	}
	task, err := ctr.Task(ctx, nil)
	if err == nil {
		st, serr := task.Status(ctx)
		if serr == nil && st.Status == containerd.Running {
			if p.exitC, err = task.Wait(ctx); err != nil {
				return nil, fmt.Errorf("service %q: wait for %s: %w", s.Name, ctr.ID(), err)
			}
			p.task = task
			return p, nil
		}
		// A one-shot job that already finished well stays finished: Up
		// runs on every `cilo run`, and a migration must not run again
		// each time. (cilo down, or a change to the service, reruns it.)
		if serr == nil && st.Status == containerd.Stopped && st.ExitStatus == 0 && pl.policies[s.Name].Mode == supervise.No {
			done := make(chan containerd.ExitStatus, 1)
			done <- *containerd.NewExitStatus(0, st.ExitTime, nil)
			p.task, p.exitC = task, done
			return p, nil
		}
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("service %q: delete old task of %s: %w", s.Name, ctr.ID(), err)
		}
	} else if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("service %q: task of %s: %w", s.Name, ctr.ID(), err)
	}
	task, err = e.newTask(ctx, ctr, spec, s.Name, e.logPath(pl.env.Project, pl.env.Name, s.Name))
	if err != nil {
		return nil, err
	}
	if p.exitC, err = task.Wait(ctx); err != nil {
		return nil, fmt.Errorf("service %q: wait for %s: %w", s.Name, ctr.ID(), err)
	}
	p.task = task
	st, err := task.Status(ctx)
	p.start = err != nil || st.Status != containerd.Running
	p.resetRestarts = supervise.Restarts(labels) > 0 || supervise.StoppedByUser(labels)
	return p, nil
}

// newTask creates ctr's task with its output going to logPath. Every task
// of a service is made here: by Up, and by the supervisor's restarts.
func (e *Engine) newTask(ctx context.Context, ctr containerd.Container, spec *specs.Spec, service, logPath string) (containerd.Task, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("service %q: create log dir: %w", service, err)
	}
	creator, err := e.logIO(service, spec.Process != nil && spec.Process.Terminal, logPath)
	if err != nil {
		return nil, err
	}
	task, err := ctr.NewTask(ctx, creator)
	if err != nil {
		return nil, fmt.Errorf("service %q: create task of %s: %w", service, ctr.ID(), err)
	}
	return task, nil
}

// logIO is where a task's output goes: the shim appends it to the log file
// itself, or, for a terminal, hands it to the logging binary.
func (e *Engine) logIO(service string, tty bool, logPath string) (cio.Creator, error) {
	if !tty {
		return cio.LogURI(&url.URL{Scheme: "file", Path: logPath}), nil
	}
	bin := e.opts.LogBinary
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("service %q: find the logging binary for its terminal: %w", service, err)
		}
		bin = exe
	}
	return cio.TerminalBinaryIO(bin, map[string]string{LoggerCommand: logPath}), nil
}

// startPrepared starts a prepared task. Started by hand, a container with
// a restart policy counts no restarts and is no longer stopped by the user.
func (e *Engine) startPrepared(ctx context.Context, p *prepared, s types.ServiceConfig) error {
	if !p.start {
		return nil
	}
	var labels map[string]string
	if p.resetRestarts {
		labels = supervise.StartedLabels()
	}
	return startTask(ctx, p.ctr, p.task, labels, s.Name)
}

// startTask sets labels on ctr, if any, and starts its new task; a task
// that fails to start is deleted. Up and the supervisor's restarts start
// every task here.
func startTask(ctx context.Context, ctr containerd.Container, task containerd.Task, labels map[string]string, service string) error {
	if len(labels) > 0 {
		if _, err := ctr.SetLabels(ctx, labels); err != nil {
			task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
			return fmt.Errorf("service %q: set restart labels of %s: %w", service, ctr.ID(), err)
		}
	}
	if err := task.Start(ctx); err != nil {
		task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
		return fmt.Errorf("service %q: start %s: %w", service, ctr.ID(), err)
	}
	return nil
}

// acquireSupervisor makes sure the restart supervisor runs and stays until
// release, so that it sees the containers Up is about to create.
func (e *Engine) acquireSupervisor(ctx context.Context) (release func(), err error) {
	if e.opts.Supervisor == nil {
		return nil, errors.New("restart policies need the restart supervisor, and this compose engine has none (a bug in cilo's wiring)")
	}
	return e.opts.Supervisor.Acquire(ctx)
}

func (e *Engine) labels(pl *plan, s types.ServiceConfig, r replica, img containerd.Image, hash, rundir string) map[string]string {
	l := map[string]string{}
	for k, v := range s.Labels {
		l[k] = v
	}
	stopSig := s.StopSignal
	if stopSig == "" {
		stopSig = "SIGTERM"
	}
	grace := 10 * time.Second
	if s.StopGracePeriod != nil {
		grace = time.Duration(*s.StopGracePeriod)
	}
	var ports []byte
	for _, sv := range pl.services {
		if sv.Name == s.Name && len(sv.Ports) > 0 {
			ports, _ = json.Marshal(sv.Ports)
		}
	}
	if ports != nil {
		l[labelPorts] = string(ports)
	}
	if h := healthcheckOf(s); h != nil {
		b, _ := json.Marshal(healthLabel{Cmd: h.cmd, Timeout: h.timeout})
		l[labelHealth] = string(b)
	}
	if pol := pl.policies[s.Name]; pol.Mode != supervise.No {
		l[supervise.LabelPolicy] = pol.String()
	}
	for k, v := range map[string]string{
		labelProject:      pl.env.Project,
		labelEnv:          pl.env.Name,
		labelService:      s.Name,
		labelReplica:      strconv.Itoa(r.number),
		labelAddr:         r.addr.String(),
		labelNetns:        r.netns,
		labelVeth:         r.veth,
		labelHash:         hash,
		labelLog:          e.logPath(pl.env.Project, pl.env.Name, s.Name),
		labelStopSig:      stopSig,
		labelStopGrace:    grace.String(),
		labelRunDir:       rundir,
		composeProject:    pl.project.Name,
		composeService:    s.Name,
		composeNumber:     strconv.Itoa(r.number),
		composeOneoff:     "False",
		composeHash:       hash,
		composeWorkingDir: pl.project.WorkingDir,
		composeFilesLabel: strings.Join(pl.project.ComposeFiles, ","),
		composeVersion:    "cilo",
		composeImage:      img.Name(),
		nerdctlName:       fmt.Sprintf("%s-%s-%s-%d", pl.project.Name, pl.env.Name, s.Name, r.number),
		nerdctlHostname:   hostnameOf(s),
	} {
		l[k] = v
	}
	return l
}

// specOpts turns the service into an OCI spec: the image's config, then
// compose's overrides, the replica's namespace and generated files.
func (e *Engine) specOpts(ctx context.Context, c *containerd.Client, pl *plan, s types.ServiceConfig, r replica, img containerd.Image, rundir string) ([]oci.SpecOpts, error) {
	ic, err := img.Spec(ctx)
	if err != nil {
		return nil, fmt.Errorf("service %q: read image config: %w", s.Name, err)
	}
	entry, cmd := ic.Config.Entrypoint, ic.Config.Cmd
	if s.Entrypoint != nil {
		entry, cmd = s.Entrypoint, nil
	}
	if s.Command != nil {
		cmd = s.Command
	}
	args := append(append([]string{}, entry...), cmd...)
	if len(args) == 0 {
		return nil, fmt.Errorf("service %q: neither the image nor the compose file gives a command", s.Name)
	}
	var env []string
	keys := make([]string, 0, len(s.Environment))
	for k := range s.Environment {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := s.Environment[k]; v != nil {
			env = append(env, k+"="+*v)
		}
	}
	mounts, err := e.mounts(ctx, c, pl, s, r, img, rundir)
	if err != nil {
		return nil, err
	}
	opts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithProcessArgs(args...),
		oci.WithEnv(env),
		oci.WithHostname(hostnameOf(s)),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: nsfs.Path(r.netns)}),
		oci.WithMounts(mounts),
	}
	if s.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(s.WorkingDir))
	}
	if s.Tty {
		opts = append(opts, oci.WithTTY)
	}
	if s.User != "" {
		opts = append(opts, oci.WithUser(s.User))
	}
	if s.ReadOnly {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	mem, cpus, pids := int64(s.MemLimit), float64(s.CPUS), s.PidsLimit
	if s.Deploy != nil && s.Deploy.Resources.Limits != nil {
		l := s.Deploy.Resources.Limits
		if l.MemoryBytes > 0 {
			mem = int64(l.MemoryBytes)
		}
		if l.NanoCPUs > 0 {
			cpus = float64(l.NanoCPUs)
		}
		if l.Pids > 0 {
			pids = l.Pids
		}
	}
	if mem > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(mem)))
	}
	if cpus > 0 {
		const period = 100000
		opts = append(opts, oci.WithCPUCFS(int64(cpus*period), period))
	}
	if pids > 0 {
		opts = append(opts, oci.WithPidsLimit(pids))
	}
	return opts, nil
}

// mounts are the generated files, bind mounts (relative ones resolved in
// the env's workspace by the loader), per-env named volumes and tmpfs.
func (e *Engine) mounts(ctx context.Context, c *containerd.Client, pl *plan, s types.ServiceConfig, r replica, img containerd.Image, rundir string) ([]specs.Mount, error) {
	m := []specs.Mount{
		{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(rundir, "hosts"), Options: []string{"rbind", "rw"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: filepath.Join(rundir, "resolv.conf"), Options: []string{"rbind", "rw"}},
		{Destination: "/etc/hostname", Type: "bind", Source: filepath.Join(rundir, "hostname"), Options: []string{"rbind", "rw"}},
	}
	for _, v := range s.Volumes {
		ro := "rw"
		if v.ReadOnly {
			ro = "ro"
		}
		switch v.Type {
		case types.VolumeTypeBind:
			src := v.Source
			if !filepath.IsAbs(src) {
				src = filepath.Join(pl.env.Workspace, src)
			}
			if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
				if v.Bind != nil && !v.Bind.CreateHostPath {
					return nil, fmt.Errorf("service %q: bind mount source %s does not exist", s.Name, src)
				}
				if err := os.MkdirAll(src, 0o755); err != nil {
					return nil, fmt.Errorf("service %q: create bind mount source: %w", s.Name, err)
				}
			}
			m = append(m, specs.Mount{Destination: v.Target, Type: "bind", Source: src, Options: []string{"rbind", ro}})
		case types.VolumeTypeVolume:
			name := v.Source
			if name == "" {
				h := sha256.Sum256([]byte(r.id + ":" + v.Target))
				name = "_anonymous/" + r.id + "-" + hex.EncodeToString(h[:6])
			}
			dir := e.volumeDir(pl.env.Project, pl.env.Name, name)
			nocopy := v.Volume != nil && v.Volume.NoCopy
			if err := ensureVolume(ctx, c, img, dir, v.Target, nocopy); err != nil {
				return nil, fmt.Errorf("service %q: create volume %s: %w", s.Name, name, err)
			}
			m = append(m, specs.Mount{Destination: v.Target, Type: "bind", Source: dir, Options: []string{"rbind", ro}})
		case types.VolumeTypeTmpfs:
			opts := []string{"nosuid", "nodev", "mode=1777"}
			if v.Tmpfs != nil && v.Tmpfs.Size > 0 {
				opts = append(opts, fmt.Sprintf("size=%d", int64(v.Tmpfs.Size)))
			}
			m = append(m, specs.Mount{Destination: v.Target, Type: "tmpfs", Source: "tmpfs", Options: opts})
		}
	}
	for _, t := range s.Tmpfs {
		dst, o, _ := strings.Cut(t, ":")
		opts := []string{"nosuid", "nodev", "mode=1777"}
		if o != "" {
			opts = append(opts, strings.Split(o, ",")...)
		}
		m = append(m, specs.Mount{Destination: dst, Type: "tmpfs", Source: "tmpfs", Options: opts})
	}
	return m, nil
}

// envContainers lists the containers of env.
func (e *Engine) envContainers(ctx context.Context, c *containerd.Client, env *state.Env) ([]containerd.Container, error) {
	f := fmt.Sprintf("labels.%q==%q,labels.%q==%q", labelProject, env.Project, labelEnv, env.Name)
	cs, err := c.Containers(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("list containers of env %q: %w", env.Name, err)
	}
	return cs, nil
}

// removeOrphans removes containers of the env whose service or replica
// is no longer in the project.
func (e *Engine) removeOrphans(ctx context.Context, c *containerd.Client, pl *plan) error {
	cs, err := e.envContainers(ctx, c, pl.env)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, rs := range pl.replicas {
		for _, r := range rs {
			want[r.id] = true
		}
	}
	var errs []error
	for _, ctr := range cs {
		if !want[ctr.ID()] {
			errs = append(errs, e.removeContainer(ctx, ctr))
		}
	}
	return errors.Join(errs...)
}

// removeContainer stops the container (stop signal, grace period, then
// SIGKILL), deletes its task, container and snapshot, its namespace, veth
// and generated files.
func (e *Engine) removeContainer(ctx context.Context, ctr containerd.Container) error {
	ctx = context.WithoutCancel(ctx)
	labels, err := ctr.Labels(ctx)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read labels of %s: %w", ctr.ID(), err)
	}
	// The env's lock keeps the supervisor from restarting the task while
	// it is stopped here; the mark keeps it from reviving the container
	// should this removal fail halfway.
	if labels[supervise.LabelPolicy] != "" {
		if _, err := ctr.SetLabels(ctx, supervise.StoppedLabels()); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("mark %s as stopped by the user: %w", ctr.ID(), err)
		}
	}
	if err := leaveRestartMonitor(ctx, ctr, labels); err != nil {
		return err
	}
	if err := stopTask(ctx, ctr, labels); err != nil {
		return err
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", ctr.ID(), err)
	}
	var errs []error
	errs = append(errs, e.removeNetwork(ctx, labels[labelNetns], labels[labelVeth]))
	if d := labels[labelRunDir]; d != "" {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// leaveRestartMonitor takes a container made by a cilo from before the
// supervisor out of containerd's restart monitor, which would otherwise
// revive its task (as "always", whatever the policy) while cilo stops or
// reuses it: one actor restarts tasks, the supervisor.
func leaveRestartMonitor(ctx context.Context, ctr containerd.Container, labels map[string]string) error {
	if _, ok := labels[restart.StatusLabel]; !ok {
		return nil
	}
	if err := ctr.Update(ctx, restart.WithNoRestarts); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("take %s out of containerd's restart monitor: %w", ctr.ID(), err)
	}
	return nil
}

func stopTask(ctx context.Context, ctr containerd.Container, labels map[string]string) error {
	task, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("task of %s: %w", ctr.ID(), err)
	}
	st, err := task.Status(ctx)
	if err == nil && st.Status == containerd.Running {
		sig := syscall.SIGTERM
		if s, err := signal.ParseSignal(labels[labelStopSig]); err == nil {
			sig = s
		}
		grace, err := time.ParseDuration(labels[labelStopGrace])
		if err != nil {
			grace = 10 * time.Second
		}
		exitC, err := task.Wait(ctx)
		if err != nil {
			return fmt.Errorf("wait for %s: %w", ctr.ID(), err)
		}
		if err := task.Kill(ctx, sig); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("signal %s: %w", ctr.ID(), err)
		}
		select {
		case <-exitC:
		case <-time.After(grace):
			if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("kill %s: %w", ctr.ID(), err)
			}
			select {
			case <-exitC:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("stop %s: still running 10 s after SIGKILL", ctr.ID())
			}
		}
	}
	if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task of %s: %w", ctr.ID(), err)
	}
	return nil
}

func (e *Engine) removeNetwork(ctx context.Context, netns, veth string) error {
	var errs []error
	if veth != "" {
		n, err := e.network()
		if err != nil {
			return err
		}
		errs = append(errs, n.Detach(ctx, veth))
	}
	if netns != "" {
		errs = append(errs, nsfs.Delete(netns))
	}
	return errors.Join(errs...)
}

// Down stops and removes the env's containers, tasks, snapshots, service
// namespaces and port forwards; named volumes and logs stay. An env that
// never ran services costs no containerd connection.
func (e *Engine) Down(ctx context.Context, env *state.Env) error {
	if !e.mayHaveContainers(env) {
		return nil
	}
	return e.down(ctx, env)
}

// mayHaveContainers reports whether env may have containers: Up writes a
// replica's run dir before its container and removes it after, Up's
// services are recorded in the state, and a task's log outlives a reboot
// (which empties the run dir but not containerd's records).
func (e *Engine) mayHaveContainers(env *state.Env) bool {
	if len(env.Services) > 0 || e.hasRunDirs(env) {
		return true
	}
	_, err := os.Stat(filepath.Join(e.opts.StateDir, "logs", env.Project, env.Name))
	return err == nil
}

func (e *Engine) hasRunDirs(env *state.Env) bool {
	ents, _ := os.ReadDir(filepath.Join(e.opts.RunDir, "compose", env.Project, env.Name))
	return len(ents) > 0
}

func (e *Engine) down(ctx context.Context, env *state.Env) error {
	c, ctx, err := e.connect(ctx)
	if err != nil {
		return err
	}
	unlock, err := e.lockEnv(ctx, env)
	if err != nil {
		return err
	}
	defer unlock()
	cs, err := e.envContainers(ctx, c, env)
	if err != nil {
		return err
	}
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, ctr := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.removeContainer(ctx, ctr)
		}()
	}
	wg.Wait()
	if nsfs.Exists(env.Netns) {
		errs = append(errs, nsnet.SetPortForwards(env.Netns, nil))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("down services of env %q: %w", env.Name, err)
	}
	return nil
}

// Remove is Down plus the env's volumes, logs and generated files: nothing
// of the env's services is left.
func (e *Engine) Remove(ctx context.Context, env *state.Env) error {
	if e.mayHaveContainers(env) {
		err := e.down(ctx, env)
		// Only logs and volumes are left of an env whose containers are
		// gone: removing them needs no containerd.
		onlyFiles := len(env.Services) == 0 && !e.hasRunDirs(env)
		if err != nil && !(errors.Is(err, ErrContainerdUnavailable) && onlyFiles) {
			return err
		}
	}
	var errs []error
	for _, d := range []string{
		filepath.Join(e.opts.StateDir, "volumes", env.Project, env.Name),
		filepath.Join(e.opts.StateDir, "logs", env.Project, env.Name),
		filepath.Join(e.opts.RunDir, "compose", env.Project, env.Name),
	} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
		os.Remove(filepath.Dir(d)) // the project's dir, once its last env is gone
	}
	os.Remove(e.lockPath(env))
	os.Remove(filepath.Dir(e.lockPath(env)))
	return errors.Join(errs...)
}
