package compose

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// health is a resolved healthcheck with docker's defaults filled in.
type health struct {
	cmd           []string
	interval      time.Duration
	timeout       time.Duration
	retries       int
	startPeriod   time.Duration
	startInterval time.Duration
}

// healthLabel is the part of a healthcheck `cilo ps` needs to probe a
// container once, kept on the container as a label.
type healthLabel struct {
	Cmd     []string      `json:"cmd"`
	Timeout time.Duration `json:"timeout"`
}

// health1 probes a container once with its healthcheck: "healthy",
// "unhealthy", or "" when it has none or does not run.
func health1(ctx context.Context, task containerd.Task, spec *specs.Spec, label string) string {
	if label == "" {
		return ""
	}
	var h healthLabel
	if json.Unmarshal([]byte(label), &h) != nil || len(h.Cmd) == 0 {
		return ""
	}
	_, code, err := probe(ctx, task, spec, h.Cmd, h.Timeout)
	if err == nil && code == 0 {
		return "healthy"
	}
	return "unhealthy"
}

// healthcheckOf resolves the service's healthcheck (nil: none or disabled).
func healthcheckOf(s types.ServiceConfig) *health {
	hc := s.HealthCheck
	if hc == nil || hc.Disable || len(hc.Test) == 0 {
		return nil
	}
	h := &health{interval: 30 * time.Second, timeout: 30 * time.Second, retries: 3}
	switch hc.Test[0] {
	case "NONE":
		return nil
	case "CMD":
		h.cmd = hc.Test[1:]
	case "CMD-SHELL":
		h.cmd = []string{"/bin/sh", "-c", strings.Join(hc.Test[1:], " ")}
	default:
		h.cmd = []string{"/bin/sh", "-c", strings.Join(hc.Test, " ")}
	}
	if len(h.cmd) == 0 {
		return nil
	}
	if hc.Interval != nil && *hc.Interval > 0 {
		h.interval = time.Duration(*hc.Interval)
	}
	if hc.Timeout != nil && *hc.Timeout > 0 {
		h.timeout = time.Duration(*hc.Timeout)
	}
	if hc.Retries != nil {
		h.retries = int(*hc.Retries)
	}
	if hc.StartPeriod != nil {
		h.startPeriod = time.Duration(*hc.StartPeriod)
	}
	// Until the first success cilo probes at start_interval, or at most
	// every second: dependents should not wait a whole interval (30 s by
	// default) for a service that is ready in 100 ms.
	h.startInterval = min(h.interval, time.Second)
	if hc.StartInterval != nil && *hc.StartInterval > 0 {
		h.startInterval = time.Duration(*hc.StartInterval)
	}
	return h
}

// waitHealthy probes until the check passes once. Failures count only
// after start_period; retries consecutive failures make the service
// unhealthy, as do the task exiting or ctx ending.
func (e *Engine) waitHealthy(ctx context.Context, task containerd.Task, spec *specs.Spec, h *health) error {
	start := time.Now()
	failures := 0
	// A service is usually ready within a few hundred milliseconds:
	// probe at 50 ms, doubling up to the start interval.
	wait := min(50*time.Millisecond, h.startInterval)
	for {
		out, code, err := probe(ctx, task, spec, h.cmd, h.timeout)
		if err == nil && code == 0 {
			return nil
		}
		if st, serr := task.Status(ctx); serr == nil && st.Status == containerd.Stopped {
			return fmt.Errorf("the container exited with status %d before it was healthy", st.ExitStatus)
		}
		if time.Since(start) >= h.startPeriod {
			failures++
		}
		if failures >= max(h.retries, 1) {
			if err != nil {
				return fmt.Errorf("healthcheck %q failed %d times: %w", h.cmd, failures, err)
			}
			return fmt.Errorf("healthcheck %q failed %d times, last with status %d: %s", h.cmd, failures, code, strings.TrimSpace(out))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, h.startInterval)
	}
}

// lockedBuffer collects an exec's stdout and stderr, which are copied by
// two goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 4096 {
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// probe runs cmd inside the task, killing it after timeout.
func probe(ctx context.Context, task containerd.Task, spec *specs.Spec, cmd []string, timeout time.Duration) (string, uint32, error) {
	ps := *spec.Process
	ps.Args = cmd
	ps.Terminal = false
	var out lockedBuffer
	proc, err := task.Exec(ctx, execID("health"), &ps, cio.NewCreator(cio.WithStreams(nil, &out, &out)))
	if err != nil {
		return "", 0, fmt.Errorf("exec healthcheck: %w", err)
	}
	defer proc.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	exitC, err := proc.Wait(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("wait for healthcheck: %w", err)
	}
	if err := proc.Start(ctx); err != nil {
		return "", 0, fmt.Errorf("start healthcheck: %w", err)
	}
	select {
	case st := <-exitC:
		proc.IO().Wait()
		return out.String(), st.ExitCode(), nil
	case <-time.After(timeout):
		proc.Kill(context.WithoutCancel(ctx), syscall.SIGKILL)
		<-exitC
		return out.String(), 0, fmt.Errorf("healthcheck timed out after %s", timeout)
	case <-ctx.Done():
		proc.Kill(context.WithoutCancel(ctx), syscall.SIGKILL)
		return "", 0, ctx.Err()
	}
}

func execID(kind string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return kind + "-" + hex.EncodeToString(b)
}
