package compose

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/cilo-dev/cilo/nsnet"
)

// ErrContainerdUnavailable is wrapped when containerd does not answer.
var ErrContainerdUnavailable = errors.New("containerd is not running")

// Options configures an [Engine].
type Options struct {
	Address   string       // containerd socket
	Namespace string       // containerd namespace of cilo's containers
	Prefix    string       // name prefix of interfaces and namespaces
	Pool      netip.Prefix // the env address pool (as nsnet.New takes it)
	StateDir  string       // logs and named volumes live under it
	RunDir    string       // per-container hosts/resolv.conf live under it
	DNSSuffix string       // <service>.<env>.<suffix> names in /etc/hosts
	Logf      func(string, ...any)
	Progress  io.Writer // image pull and build progress; nil discards it

	// LogBinary logs services with a terminal (tty: true); it must run
	// [RunLogger] when called as `<LogBinary> compose-log-to <file>`.
	// Empty: this process's own executable.
	LogBinary string

	// Supervisor carries out restart policies once Up has returned
	// (package supervise's Launcher). Up acquires it before it creates
	// anything when a service has a restart policy; nil fails such an Up.
	Supervisor Supervisor
}

// Supervisor is the restart supervisor as Up needs it.
type Supervisor interface {
	// Acquire makes sure a supervisor runs and keeps it from exiting
	// for lack of work until release is called.
	Acquire(ctx context.Context) (release func(), err error)
}

// Engine runs compose services of envs. It implements sandbox.Services.
// It is safe for concurrent use; it connects to containerd only when an
// env actually has a compose file.
type Engine struct {
	opts Options
	net  *nsnet.Network

	mu     sync.Mutex
	client *containerd.Client
}

// New returns an engine; it connects to nothing yet.
func New(opts Options) *Engine {
	if opts.Namespace == "" {
		opts.Namespace = "cilo"
	}
	if opts.Address == "" {
		opts.Address = "/run/containerd/containerd.sock"
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	return &Engine{opts: opts}
}

// Close releases the containerd connection, if one was made.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.client == nil {
		return nil
	}
	err := e.client.Close()
	e.client = nil
	return err
}

func (e *Engine) logf(format string, args ...any) { e.opts.Logf("compose: "+format, args...) }

// network returns the nsnet view of the pool.
func (e *Engine) network() (*nsnet.Network, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.net == nil {
		n, err := nsnet.New(e.opts.Prefix, e.opts.Pool)
		if err != nil {
			return nil, err
		}
		e.net = n
	}
	return e.net, nil
}

// connect returns the containerd client and ctx in cilo's namespace,
// connecting on first use.
func (e *Engine) connect(ctx context.Context) (*containerd.Client, context.Context, error) {
	ctx = namespaces.WithNamespace(ctx, e.opts.Namespace)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.client != nil {
		return e.client, ctx, nil
	}
	how := "start it: sudo scripts/ensure-containerd.sh (installs and starts containerd), or sudo systemctl start containerd"
	if _, err := os.Stat(e.opts.Address); err != nil {
		return nil, ctx, fmt.Errorf("%w: no socket at %s (%s)", ErrContainerdUnavailable, e.opts.Address, how)
	}
	c, err := containerd.New(e.opts.Address, containerd.WithDefaultNamespace(e.opts.Namespace), containerd.WithTimeout(5*time.Second))
	if err != nil {
		return nil, ctx, fmt.Errorf("%w: connect to %s: %v (%s)", ErrContainerdUnavailable, e.opts.Address, err, how)
	}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Version(vctx); err != nil {
		c.Close()
		return nil, ctx, fmt.Errorf("%w: no answer on %s: %v (%s)", ErrContainerdUnavailable, e.opts.Address, err, how)
	}
	e.client = c
	return c, ctx, nil
}

// logPath is where a service's output goes; it outlives the CLI. project
// is the cilo project (state.Env.Project), like every per-env path here.
func (e *Engine) logPath(project, env, service string) string {
	return filepath.Join(e.opts.StateDir, "logs", project, env, service+".log")
}

// volumeDir holds the env's named volume.
func (e *Engine) volumeDir(project, env, volume string) string {
	return filepath.Join(e.opts.StateDir, "volumes", project, env, volume)
}

// runDir holds the generated files of one replica.
func (e *Engine) runDir(project, env, replica string) string {
	return filepath.Join(e.opts.RunDir, "compose", project, env, replica)
}
