package state

import (
	"context"
	"reflect"
	"testing"
)

// TestRereaderFollowsEveryChange: after each kind of change a Rereader
// returns what a full Read returns, parsing only the records the change
// wrote.
func TestRereaderFollowsEveryChange(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if err := insertLowest(s, n); err != nil {
			t.Fatal(err)
		}
	}
	r := s.Rereader()
	steps := []struct {
		name   string
		change func() error
		parsed int // records parsed by the Read after change
	}{
		{"first read", func() error { return nil }, 3},
		{"nothing changed", func() error { return nil }, 0},
		{"insert", func() error { return insertLowest(s, "d") }, 1},
		{"update", func() error {
			_, err := s.Update(ctx, "p/b", func(e *Env) error { e.Status = StatusRunning; return nil })
			return err
		}, 1},
		{"update to equal content", func() error {
			_, err := s.Update(ctx, "p/b", func(e *Env) error { return nil })
			return err
		}, 1},
		{"delete", func() error { return s.Delete(ctx, "p/a") }, 0},
		{"delete and create again", func() error {
			if err := s.Delete(ctx, "p/c"); err != nil {
				return err
			}
			return insertLowest(s, "c")
		}, 1},
	}
	for _, step := range steps {
		if err := step.change(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		before := r.parsed
		got, err := r.Read(ctx)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		want, err := s.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Rereader read %v, Read %v", step.name, got.Envs, want.Envs)
		}
		if n := r.parsed - before; n != step.parsed {
			t.Errorf("%s: parsed %d records, want %d", step.name, n, step.parsed)
		}
	}
}
