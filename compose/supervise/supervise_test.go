package supervise

import (
	"context"
	"sync"
	"testing"
	"time"
)

// fakeRestarts stands in for the restarts of one container: each call
// gets the next pid and runs during, which may report exits meanwhile.
type fakeRestarts struct {
	mu     sync.Mutex
	calls  int
	during func(call int, pid uint32)
}

func (f *fakeRestarts) restart(context.Context, string) (uint32, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	pid := uint32(100 + n)
	if f.during != nil {
		f.during(n, pid)
	}
	return pid, nil
}

func (f *fakeRestarts) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func newTestSupervisor(f *fakeRestarts) *supervisor {
	s := &supervisor{
		o:       Options{Backoff: Backoff{Initial: time.Millisecond, Max: 8 * time.Millisecond, Reset: time.Hour}, Logf: func(string, ...any) {}},
		watched: map[string]*watched{},
	}
	s.restartTask = f.restart
	return s
}

// settle waits for the supervisor's restarts to be done.
func settle(t *testing.T, s *supervisor) {
	t.Helper()
	for range 500 {
		s.mu.Lock()
		busy := false
		for _, w := range s.watched {
			busy = busy || w.waiting || w.restarting
		}
		s.mu.Unlock()
		if !busy {
			s.wg.Wait()
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("restarts still pending after 1 s")
}

func TestSchedule(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// run reports exits to s; during, if set, runs in each restart.
		run    func(s *supervisor)
		during func(s *supervisor) func(call int, pid uint32)
		want   int
	}{
		{
			name: "one_exit_one_restart",
			run:  func(s *supervisor) { s.exited(ctx, "c", 10) },
			want: 1,
		},
		{
			name: "exit_seen_twice_while_waiting",
			run: func(s *supervisor) {
				s.exited(ctx, "c", 10) // the event
				s.exited(ctx, "c", 10) // and a look at the stopped task
			},
			want: 1,
		},
		{
			// The new task exits before its restart has returned: that
			// exit must lead to another restart, not be dropped.
			name: "new_task_exits_during_restart",
			run:  func(s *supervisor) { s.exited(ctx, "c", 10) },
			during: func(s *supervisor) func(int, uint32) {
				return func(call int, pid uint32) {
					if call == 1 {
						s.exited(ctx, "c", pid)
					}
				}
			},
			want: 2,
		},
		{
			name: "handled_exit_seen_again_during_restart",
			run:  func(s *supervisor) { s.exited(ctx, "c", 10) },
			during: func(s *supervisor) func(int, uint32) {
				return func(call int, pid uint32) { s.exited(ctx, "c", 10) }
			},
			want: 1,
		},
		{
			name: "exit_of_unknown_pid_during_restart",
			run:  func(s *supervisor) { s.exited(ctx, "c", 10) },
			during: func(s *supervisor) func(int, uint32) {
				return func(call int, pid uint32) {
					if call == 1 {
						s.exited(ctx, "c", 0)
					}
				}
			},
			want: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeRestarts{}
			s := newTestSupervisor(f)
			if tt.during != nil {
				f.during = tt.during(s)
			}
			tt.run(s)
			settle(t, s)
			if got := f.count(); got != tt.want {
				t.Fatalf("%d restarts, want %d", got, tt.want)
			}
		})
	}
}

// TestScheduleBackoff checks that the delay doubles while the tasks the
// supervisor started keep exiting, and starts afresh for a task it did
// not start (cilo up's).
func TestScheduleBackoff(t *testing.T) {
	ctx := context.Background()
	f := &fakeRestarts{}
	s := newTestSupervisor(f)
	delay := func() time.Duration {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.watched["c"].delay
	}
	s.exited(ctx, "c", 10) // cilo up's task
	settle(t, s)
	var got []time.Duration
	got = append(got, delay())
	for i := range 4 {
		s.exited(ctx, "c", uint32(101+i)) // each time the task it started
		settle(t, s)
		got = append(got, delay())
	}
	s.exited(ctx, "c", 7) // a task cilo up started again
	settle(t, s)
	got = append(got, delay())
	want := []time.Duration{1, 2, 4, 8, 8, 1}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
}
