// Package supervise carries out compose restart policies after the cilo
// command that started the services has exited.
//
// containerd's own restart monitor cannot do it faithfully: containerd 1.6
// ignores its policy label (on-failure and unless-stopped act as always)
// and it only looks every 10 s. So cilo runs one supervisor per
// configuration, a background process started on demand by cilo up
// ([Launcher]), that subscribes to containerd's task exit events in cilo's
// namespace and restarts a task when its container's policy says so,
// after docker's backoff. Restarts go through the compose engine
// ([Restarter]), so a restarted task is made exactly as cilo up makes one,
// under the lock that cilo up and down hold. On start and after every
// reconnection to containerd it looks at every container with a policy,
// catching exits it missed, and it exits when no container with a policy
// is left.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
)

// Restarter gives containers new tasks; *compose.Engine implements it.
type Restarter interface {
	// RestartTask calls decide with ctr's labels and the exit status of
	// its stopped task, holding the lock that cilo up and down hold for
	// ctr's env; when decide says so, it sets the labels decide returns
	// and starts a new task made as cilo up makes one. It returns the
	// new task's pid, 0 when it started none. A container that is gone,
	// or whose task is not stopped, is left alone without error.
	RestartTask(ctx context.Context, ctr containerd.Container, decide func(labels map[string]string, exitStatus uint32) (map[string]string, bool)) (uint32, error)
}

// Options configures [Run].
type Options struct {
	Address   string // containerd's socket
	Namespace string // containerd namespace of cilo's containers
	RunDir    string // the pid and lock files; one supervisor per run dir
	Restarter Restarter
	Logf      func(format string, args ...any) // nil: discarded

	// Backoff spaces restarts; zero: docker's (100 ms doubling to 1 min,
	// reset after 10 s of running).
	Backoff Backoff
	// Resync is how often every container with a policy is looked at
	// besides the events, in case one was missed; zero: 30 s.
	Resync time.Duration
}

// Run supervises until ctx ends or no container with a restart policy is
// left. It returns [ErrAlreadyRunning] when another supervisor runs for
// o.RunDir. While containerd does not answer it keeps trying, with a
// backoff of up to 5 s.
func Run(ctx context.Context, o Options) error {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Backoff == (Backoff{}) {
		o.Backoff = dockerBackoff()
	}
	if o.Resync == 0 {
		o.Resync = 30 * time.Second
	}
	release, err := lockPID(o.RunDir)
	if err != nil {
		return err
	}
	s := &supervisor{o: o, releasePID: release, watched: map[string]*watched{}}
	s.restartTask = s.restart
	defer s.release()
	ctx = namespaces.WithNamespace(ctx, o.Namespace)
	ctx, cancel := context.WithCancel(ctx)
	defer s.wg.Wait() // pending restarts, which cancel ends
	defer cancel()
	o.Logf("supervise: watching restart policies in containerd namespace %s on %s", o.Namespace, o.Address)
	for delay := time.Duration(0); ; {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		c, err := s.connect(ctx)
		if err != nil {
			return nil // ctx ended
		}
		served := time.Now()
		idle, err := s.serve(ctx, c)
		s.setClient(nil)
		c.Close()
		switch {
		case idle:
			o.Logf("supervise: no container with a restart policy is left; exiting")
			return nil
		case ctx.Err() != nil:
			o.Logf("supervise: stopped")
			return nil
		}
		// A stream that breaks at once is not tried again at once.
		delay = min(max(2*delay, 100*time.Millisecond), 5*time.Second)
		if time.Since(served) > time.Minute {
			delay = 0
		}
		o.Logf("supervise: lost containerd (%v); reconnecting", err)
	}
}

// supervisor is Run's state. Events arrive on Run's goroutine; each
// restart waits out its backoff on a goroutine of its own.
type supervisor struct {
	o  Options
	wg sync.WaitGroup
	// restartTask is s.restart; tests of the scheduling replace it.
	restartTask func(ctx context.Context, id string) (pid uint32, err error)

	mu         sync.Mutex
	client     *containerd.Client
	watched    map[string]*watched // by container id
	releasePID func()              // nil once released
}

// watched is a container whose task exited at least once.
type watched struct {
	delay   time.Duration // the last backoff delay
	pid     uint32        // the task the supervisor last started; 0: none
	started time.Time     // when it started that task
	exited  uint32        // the pid whose exit the current restart handles

	waiting    bool // a restart waits out its delay
	restarting bool // a restart runs
	again      bool // and another task exited meanwhile
}

// release gives up the pid file: this supervisor is done.
func (s *supervisor) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.releasePID != nil {
		s.releasePID()
		s.releasePID = nil
	}
}

func (s *supervisor) setClient(c *containerd.Client) {
	s.mu.Lock()
	s.client = c
	s.mu.Unlock()
}

// connect dials containerd until it answers or ctx ends.
func (s *supervisor) connect(ctx context.Context) (*containerd.Client, error) {
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		c, err := containerd.New(s.o.Address, containerd.WithDefaultNamespace(s.o.Namespace), containerd.WithTimeout(5*time.Second))
		if err == nil {
			vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = c.Version(vctx)
			cancel()
			if err == nil {
				s.setClient(c)
				return c, nil
			}
			c.Close()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

const (
	topicExit   = "/tasks/exit"
	topicDelete = "/containers/delete"
)

// serve handles c's events until the stream breaks (an error), ctx ends,
// or no container with a policy is left (idle).
func (s *supervisor) serve(ctx context.Context, c *containerd.Client) (idle bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var filters []string
	for _, t := range []string{topicExit, topicDelete} {
		filters = append(filters, fmt.Sprintf("namespace==%q,topic==%q", s.o.Namespace, t))
	}
	// Subscribed first, then looked at: an exit between the two shows
	// in both, and a restart is never scheduled twice.
	evs, errs := c.Subscribe(sctx, filters...)
	check := func() (bool, error) {
		if err := s.reconcile(ctx, c); err != nil {
			return false, err
		}
		return s.idle(ctx, c)
	}
	if idle, err := check(); idle || err != nil {
		return idle, err
	}
	tick := time.NewTicker(s.o.Resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case err := <-errs:
			if err == nil {
				err = errors.New("event stream ended")
			}
			return false, err
		case ev := <-evs:
			switch ev.Topic {
			case topicExit:
				v, err := typeurl.UnmarshalAny(ev.Event)
				if err != nil {
					s.o.Logf("supervise: decode %s event: %v", ev.Topic, err)
					continue
				}
				// Exits of exec'd processes (healthchecks, cilo exec)
				// carry another process id.
				if e, ok := v.(*apievents.TaskExit); ok && e.ID == e.ContainerID {
					s.exited(ctx, e.ContainerID, e.Pid)
				}
			case topicDelete:
				if idle, err := s.idle(ctx, c); idle || err != nil {
					return idle, err
				}
			}
		case <-tick.C:
			if idle, err := check(); idle || err != nil {
				return idle, err
			}
		}
	}
}

// policyFilter selects the containers that have a restart policy.
const policyFilter = `labels."` + LabelPolicy + `"`

// reconcile schedules a restart of every container with a policy whose
// task is stopped: exits that happened while no supervisor ran or while
// containerd was away. Only a failed list is an error (containerd went
// away); a container it cannot look at is logged and looked at next time.
func (s *supervisor) reconcile(ctx context.Context, c *containerd.Client) error {
	cs, err := c.Containers(ctx, policyFilter)
	if err != nil {
		return fmt.Errorf("list containers with a restart policy: %w", err)
	}
	seen := map[string]bool{}
	for _, ctr := range cs {
		seen[ctr.ID()] = true
		task, err := ctr.Task(ctx, nil)
		if errdefs.IsNotFound(err) {
			continue // never started, or being replaced by cilo up
		}
		var st containerd.Status
		if err == nil {
			st, err = task.Status(ctx)
		}
		switch {
		case errdefs.IsNotFound(err):
		case err != nil:
			s.o.Logf("supervise: look at %s: %v", ctr.ID(), err)
		case st.Status == containerd.Stopped:
			s.exited(ctx, ctr.ID(), task.Pid())
		}
	}
	s.mu.Lock()
	for id, w := range s.watched {
		if !seen[id] && !w.waiting && !w.restarting {
			delete(s.watched, id)
		}
	}
	s.mu.Unlock()
	return nil
}

// idle reports whether no container with a restart policy is left that
// the user did not stop. Then it releases the pid file while holding the
// hold lock, so that a cilo up that is about to create such a container
// either kept it from exiting or starts a new supervisor.
func (s *supervisor) idle(ctx context.Context, c *containerd.Client) (bool, error) {
	unlock, ok := tryFlock(filepath.Join(s.o.RunDir, holdFile))
	if !ok {
		return false, nil // a cilo up holds it
	}
	defer unlock()
	cs, err := c.Containers(ctx, policyFilter)
	if err != nil {
		return false, fmt.Errorf("list containers with a restart policy: %w", err)
	}
	for _, ctr := range cs {
		labels, err := ctr.Labels(ctx)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil || supervised(labels) {
			return false, nil
		}
	}
	s.release()
	return true, nil
}

// exited handles the exit of container id's task pid (0: unknown): it
// schedules a restart after the backoff delay. An exit seen while that
// container's restart waits is the same exit seen twice (event and look);
// one seen while the restart runs is the new task's, handled once the
// restart is done.
func (s *supervisor) exited(ctx context.Context, id string, pid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.watched[id]
	if w == nil {
		w = &watched{}
		s.watched[id] = w
	}
	switch {
	case w.waiting:
	case w.restarting:
		w.again = w.again || pid == 0 || pid != w.exited
	default:
		s.schedule(ctx, id, w, pid)
	}
}

// schedule restarts w's container after its next backoff delay; s.mu is
// held.
func (s *supervisor) schedule(ctx context.Context, id string, w *watched, pid uint32) {
	ran := s.o.Backoff.Reset // a task cilo up started: a fresh backoff
	if pid != 0 && pid == w.pid {
		ran = time.Since(w.started)
	}
	w.delay = s.o.Backoff.Next(w.delay, ran)
	w.waiting, w.exited = true, pid
	s.wg.Add(1)
	go func(delay time.Duration) {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		s.mu.Lock()
		w.waiting, w.restarting = false, true
		s.mu.Unlock()
		started, err := s.restartTask(ctx, id)
		if err != nil {
			s.o.Logf("supervise: restart %s: %v", id, err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		w.restarting = false
		if started != 0 {
			w.pid, w.started = started, time.Now()
			s.o.Logf("supervise: restarted %s after %v", id, delay)
		}
		switch {
		case w.again:
			w.again = false
			s.schedule(ctx, id, w, w.pid)
		case started == 0 && err == nil:
			// Not to be restarted, or cilo up started it: the next exit
			// starts a fresh backoff.
			delete(s.watched, id)
		}
	}(w.delay)
}

// restart has the container's task restarted if its policy says so and
// returns the new task's pid, 0 when none was started.
func (s *supervisor) restart(ctx context.Context, id string) (uint32, error) {
	s.mu.Lock()
	c := s.client
	s.mu.Unlock()
	if c == nil {
		return 0, errors.New("containerd is away; the next look after reconnecting retries")
	}
	ctr, err := c.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("load container: %w", err)
	}
	// Exits of containers without a policy, or of those cilo down is
	// stopping, need not wait for the env's lock to be turned down.
	labels, err := ctr.Labels(ctx)
	if errdefs.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read labels: %w", err)
	}
	if !supervised(labels) {
		return 0, nil
	}
	return s.o.Restarter.RestartTask(ctx, ctr, decide)
}
