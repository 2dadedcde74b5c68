package compose

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"

	"github.com/cilo-dev/cilo/compose/supervise"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// Container is one service replica as `cilo ps` shows it.
type Container struct {
	Name     string       `json:"name"`
	ID       string       `json:"id"`
	Service  string       `json:"service"`
	Replica  int          `json:"replica"`
	Image    string       `json:"image"`
	Status   string       `json:"status"`           // running, stopped, created, ...
	Health   string       `json:"health,omitempty"` // healthy or unhealthy: one probe now
	ExitCode *uint32      `json:"exit_code,omitempty"`
	Addr     string       `json:"addr"`
	Ports    []state.Port `json:"ports,omitempty"`    // localhost:Published inside the env
	Restarts int          `json:"restarts,omitempty"` // by the restart supervisor since cilo up started it
}

// Ps lists the env's containers sorted by service and replica. A running
// container with a healthcheck is probed once, so Health is current.
func (e *Engine) Ps(ctx context.Context, env *state.Env) ([]Container, error) {
	c, ctx, err := e.connect(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := e.envContainers(ctx, c, env)
	if err != nil {
		return nil, err
	}
	out := []Container{}
	for _, ctr := range cs {
		info, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("inspect %s: %w", ctr.ID(), err)
		}
		l := info.Labels
		n, _ := strconv.Atoi(l[labelReplica])
		ct := Container{Name: l[nerdctlName], ID: ctr.ID(), Service: l[labelService], Replica: n,
			Image: info.Image, Status: "created", Addr: l[labelAddr], Restarts: supervise.Restarts(l)}
		if p := l[labelPorts]; p != "" {
			json.Unmarshal([]byte(p), &ct.Ports)
		}
		task, err := ctr.Task(ctx, nil)
		if err == nil {
			st, err := task.Status(ctx)
			if err == nil {
				ct.Status = string(st.Status)
				if st.Status == containerd.Running {
					if spec, err := ctr.Spec(ctx); err == nil {
						ct.Health = health1(ctx, task, spec, l[labelHealth])
					}
				}
				if st.Status == containerd.Stopped {
					code := st.ExitStatus
					ct.ExitCode = &code
				}
			}
		}
		out = append(out, ct)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Replica < out[j].Replica
	})
	return out, nil
}

// LogsOptions selects what Logs prints.
type LogsOptions struct {
	Service string // empty: every service, lines prefixed with the name
	Follow  bool   // keep printing new lines until ctx ends
	Tail    int    // only the last Tail lines of each service; <0: all
}

// Logs copies the env's service logs to w. It reads the log files, so it
// works without containerd and after the CLI that started them exited.
func (e *Engine) Logs(ctx context.Context, env *state.Env, o LogsOptions, w io.Writer) error {
	dir := filepath.Join(e.opts.StateDir, "logs", env.Project, env.Name)
	var files []string
	if o.Service != "" {
		p := filepath.Join(dir, o.Service+".log")
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("no logs of service %q in env %q: %w", o.Service, env.Name, err)
		}
		files = []string{p}
	} else {
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("logs of env %q: %w", env.Name, err)
		}
		for _, en := range ents {
			if strings.HasSuffix(en.Name(), ".log") {
				files = append(files, filepath.Join(dir, en.Name()))
			}
		}
	}
	width := 0
	for _, f := range files {
		width = max(width, len(serviceOfLog(f)))
	}
	prefix := func(f string) string {
		if o.Service != "" {
			return ""
		}
		return fmt.Sprintf("%-*s | ", width, serviceOfLog(f))
	}
	offsets := make([]int64, len(files))
	for i, f := range files {
		off, err := writeTail(f, o.Tail, prefix(f), w)
		if err != nil {
			return err
		}
		offsets[i] = off
	}
	if !o.Follow {
		return nil
	}
	partial := make([]string, len(files))
	for {
		for i, f := range files {
			off, rest, err := copyFrom(f, offsets[i], partial[i], prefix(f), w)
			if err != nil {
				return err
			}
			offsets[i], partial[i] = off, rest
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func serviceOfLog(path string) string { return strings.TrimSuffix(filepath.Base(path), ".log") }

// writeTail writes the last n lines (all when n < 0) and returns the size
// read.
func writeTail(path string, n int, prefix string, w io.Writer) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read log: %w", err)
	}
	// A last line without its newline (a program that exited mid-line)
	// is shown, ended.
	complete := string(b)
	if complete != "" && !strings.HasSuffix(complete, "\n") {
		complete += "\n"
	}
	lines := strings.SplitAfter(complete, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if n >= 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for _, l := range lines {
		if _, err := io.WriteString(w, prefix+l); err != nil {
			return 0, err
		}
	}
	return int64(len(b)), nil
}

// copyFrom writes the complete lines after off, keeping a trailing partial
// line for the next round.
func copyFrom(path string, off int64, partial, prefix string, w io.Writer) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return off, partial, fmt.Errorf("read log: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() < off {
		off = 0 // truncated: start again
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return off, partial, err
	}
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		off += int64(len(line))
		if err != nil {
			return off, partial + line, nil
		}
		if _, err := io.WriteString(w, prefix+partial+line); err != nil {
			return off, "", err
		}
		partial = ""
	}
}

// ExecOptions is a command to run in a service's container.
type ExecOptions struct {
	Service string
	Replica int      // 1 when zero
	Args    []string // /bin/sh when empty
	TTY     bool     // allocate a terminal; Stdin should be one
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
}

// Exec runs a command inside a running service container, as the
// container's user, environment and working directory, and returns its
// exit status.
func (e *Engine) Exec(ctx context.Context, env *state.Env, o ExecOptions) (int, error) {
	c, ctx, err := e.connect(ctx)
	if err != nil {
		return 0, err
	}
	if o.Replica == 0 {
		o.Replica = 1
	}
	cs, err := e.envContainers(ctx, c, env)
	if err != nil {
		return 0, err
	}
	var ctr containerd.Container
	for _, x := range cs {
		l, err := x.Labels(ctx)
		if err == nil && l[labelService] == o.Service && l[labelReplica] == strconv.Itoa(o.Replica) {
			ctr = x
		}
	}
	if ctr == nil {
		return 0, fmt.Errorf("service %q replica %d of env %q: %w (is it up? cilo ps %s)", o.Service, o.Replica, env.Name, errdefs.ErrNotFound, env.Name)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("service %q is not running in env %q: %w", o.Service, env.Name, err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return 0, fmt.Errorf("read spec of %s: %w", ctr.ID(), err)
	}
	ps := *spec.Process
	ps.Args = o.Args
	if len(ps.Args) == 0 {
		ps.Args = []string{"/bin/sh"}
	}
	ps.Terminal = o.TTY
	stdout, stderr := serialize(o.Stdout, o.Stderr)
	streams := []cio.Opt{cio.WithStreams(o.Stdin, stdout, stderr)}
	var con console.Console
	if o.TTY {
		streams = append(streams, cio.WithTerminal)
		if f, ok := o.Stdin.(*os.File); ok {
			cur, err := console.ConsoleFromFile(f)
			if err != nil {
				return 0, fmt.Errorf("exec with a terminal: stdin is not one: %w", err)
			}
			con = cur
			if err := con.SetRaw(); err != nil {
				return 0, fmt.Errorf("set terminal raw: %w", err)
			}
			defer con.Reset()
		}
	}
	proc, err := task.Exec(ctx, execID("exec"), &ps, cio.NewCreator(streams...))
	if err != nil {
		return 0, fmt.Errorf("exec in %s: %w", ctr.ID(), err)
	}
	exitC, err := proc.Wait(ctx)
	if err != nil {
		proc.Delete(context.WithoutCancel(ctx))
		return 0, fmt.Errorf("wait for exec in %s: %w", ctr.ID(), err)
	}
	if err := proc.Start(ctx); err != nil {
		proc.Delete(context.WithoutCancel(ctx))
		return 0, fmt.Errorf("start exec in %s: %w", ctr.ID(), err)
	}
	done := make(chan struct{})
	if con != nil {
		// Follow the terminal's size, now and on every SIGWINCH.
		resize := func() {
			if size, err := con.Size(); err == nil {
				proc.Resize(ctx, uint32(size.Width), uint32(size.Height))
			}
		}
		resize()
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-winch:
					resize()
				case <-done:
					return
				}
			}
		}()
	}
	st := <-exitC
	close(done)
	// Delete waits for the output to be copied.
	proc.Delete(context.WithoutCancel(ctx))
	code, _, err := st.Result()
	if err != nil {
		return 0, fmt.Errorf("exec in %s: %w", ctr.ID(), err)
	}
	return int(code), nil
}

// lockedWriter serialises writes and hides io.ReaderFrom: containerd
// copies stdout and stderr in two goroutines, and a writer such as
// *bytes.Buffer given for both loses output when its ReadFrom runs twice
// at once.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// serialize wraps the exec's output writers; one writer given for both
// gets one lock.
func serialize(stdout, stderr io.Writer) (io.Writer, io.Writer) {
	var mu sync.Mutex
	wrap := func(w io.Writer, m *sync.Mutex) io.Writer {
		if w == nil {
			return nil
		}
		return lockedWriter{m, w}
	}
	if stdout == stderr {
		return wrap(stdout, &mu), wrap(stderr, &mu)
	}
	var mu2 sync.Mutex
	return wrap(stdout, &mu), wrap(stderr, &mu2)
}
