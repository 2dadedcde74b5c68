package dns

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// TestWaitServed: WaitServed returns once the server answers for the env
// as recorded (a new env, then its services), and fails with ctx when it
// never does.
func TestWaitServed(t *testing.T) {
	old := testEnv("shop", "other", 1)
	s, addr := startServer(t, NewZone("test", []*state.Env{old}, 1), &fakeExchanger{})

	tests := []struct {
		name string
		env  *state.Env
	}{
		{"new_env_apex", testEnv("shop", "dev", 2)},
		{"services_added", testEnv("shop", "other", 1, svc("web", "10.250.1.9"), svc("api", "10.250.1.8"))},
		{"ingress_apex", func() *state.Env {
			e := testEnv("shop", "edge", 3, svc("proxy", "10.250.3.7"))
			e.Services[0].Ingress = true
			return e
		}()},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if err := WaitServed(ctx, addr, "test", tt.env); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("before the zone has it: %v, want a deadline error", err)
			}
			done := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				done <- WaitServed(ctx, addr, "test", tt.env)
			}()
			time.Sleep(20 * time.Millisecond) // a reload a little later
			s.SetZone(NewZone("test", []*state.Env{old, tt.env}, uint32(i+2)))
			if err := <-done; err != nil {
				t.Fatalf("after the zone has it: %v", err)
			}
		})
	}
}
