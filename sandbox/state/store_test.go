package state

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
)

func TestUpdateConcurrentGoroutines(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := s.Update(context.Background(), func(st *State) error {
				st.Envs[Key("p", fmt.Sprint(i))] = &Env{Project: "p", Name: fmt.Sprint(i), Index: len(st.Envs)}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	checkDistinct(t, s, n)
}

// checkDistinct asserts n envs whose indexes are all different: every
// update saw the previous one's result.
func checkDistinct(t *testing.T, s *Store, n int) {
	t.Helper()
	st, err := s.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Envs) != n {
		t.Fatalf("%d envs, want %d (lost updates)", len(st.Envs), n)
	}
	seen := map[int]bool{}
	for _, e := range st.Envs {
		if seen[e.Index] {
			t.Fatalf("index %d given twice", e.Index)
		}
		seen[e.Index] = true
	}
}

// TestUpdateConcurrentProcesses runs writers in separate processes (this
// test binary re-executed), as parallel cilo commands are.
func TestUpdateConcurrentProcesses(t *testing.T) {
	if dir := os.Getenv("STATE_TEST_WRITER_DIR"); dir != "" {
		s, _ := Open(dir)
		id := os.Getenv("STATE_TEST_WRITER_ID")
		for j := 0; j < 10; j++ {
			err := s.Update(context.Background(), func(st *State) error {
				name := id + "-" + strconv.Itoa(j)
				st.Envs[Key("p", name)] = &Env{Project: "p", Name: name, Index: len(st.Envs)}
				return nil
			})
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		os.Exit(0)
	}
	dir := t.TempDir()
	const procs = 8
	var cmds []*exec.Cmd
	for i := 0; i < procs; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestUpdateConcurrentProcesses$")
		cmd.Env = append(os.Environ(), "STATE_TEST_WRITER_DIR="+dir, "STATE_TEST_WRITER_ID="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("writer: %v", err)
		}
	}
	s, _ := Open(dir)
	checkDistinct(t, s, procs*10)
}

func TestUpdateErrorKeepsState(t *testing.T) {
	s, _ := Open(t.TempDir())
	ctx := context.Background()
	s.Update(ctx, func(st *State) error { st.Envs["p/a"] = &Env{Name: "a"}; return nil })
	err := s.Update(ctx, func(st *State) error {
		delete(st.Envs, "p/a")
		return fmt.Errorf("refused")
	})
	if err == nil {
		t.Fatal("error not returned")
	}
	st, _ := s.Read(ctx)
	if _, ok := st.Envs["p/a"]; !ok {
		t.Fatal("failed update was written")
	}
}

func TestReadRejectsNewerSchemaAndGarbage(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"newer_schema", `{"version": 99, "envs": {}}`},
		{"garbage", `{"version": 1, "envs": `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(dir+"/state.json", []byte(tt.content), 0o644)
			s, _ := Open(dir)
			if _, err := s.Read(context.Background()); err == nil {
				t.Fatal("read accepted it")
			}
			if err := s.Update(context.Background(), func(*State) error { return nil }); err == nil {
				t.Fatal("update overwrote it")
			}
		})
	}
}

func TestLockHonoursContext(t *testing.T) {
	s, _ := Open(t.TempDir())
	release := make(chan struct{})
	held := make(chan struct{})
	go s.Update(context.Background(), func(*State) error { close(held); <-release; return nil })
	<-held
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Update(ctx, func(*State) error { return nil }); err == nil {
		t.Fatal("update ran while another held the lock")
	}
	close(release)
}
