package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// insertLowest inserts env p/name at the lowest free pool index, as the
// sandbox does.
func insertLowest(s *Store, name string) error {
	_, err := s.Insert(context.Background(), Key("p", name), func(used func(int) bool) (*Env, error) {
		i := 0
		for used(i) {
			i++
		}
		return &Env{Project: "p", Name: name, Index: i}, nil
	})
	return err
}

func TestInsertConcurrentGoroutines(t *testing.T) {
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
			if err := insertLowest(s, fmt.Sprint("e", i)); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	checkDistinct(t, s, n)
}

// checkDistinct asserts n envs whose indexes are all different: every
// insert saw the previous one's claim.
func checkDistinct(t *testing.T, s *Store, n int) {
	t.Helper()
	st, err := s.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Envs) != n {
		t.Fatalf("%d envs, want %d (lost inserts)", len(st.Envs), n)
	}
	seen := map[int]bool{}
	for _, e := range st.Envs {
		if seen[e.Index] {
			t.Fatalf("index %d given twice", e.Index)
		}
		seen[e.Index] = true
	}
}

// TestInsertConcurrentProcesses runs writers in separate processes (this
// test binary re-executed), as parallel cilo commands are.
func TestInsertConcurrentProcesses(t *testing.T) {
	if dir := os.Getenv("STATE_TEST_WRITER_DIR"); dir != "" {
		s, err := Open(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		id := os.Getenv("STATE_TEST_WRITER_ID")
		for j := 0; j < 10; j++ {
			if err := insertLowest(s, id+"-"+strconv.Itoa(j)); err != nil {
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
		cmd := exec.Command(os.Args[0], "-test.run=^TestInsertConcurrentProcesses$")
		cmd.Env = append(os.Environ(), "STATE_TEST_WRITER_DIR="+dir, "STATE_TEST_WRITER_ID=w"+strconv.Itoa(i))
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

func TestInsertExisting(t *testing.T) {
	s, _ := Open(t.TempDir())
	if err := insertLowest(s, "a"); err != nil {
		t.Fatal(err)
	}
	err := insertLowest(s, "a")
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second insert: %v, want ErrExists", err)
	}
	checkDistinct(t, s, 1)
}

func TestUpdate(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		fn      func(*Env) error
		wantErr bool
		want    Status
	}{
		{"change", func(e *Env) error { e.Status = StatusRunning; return nil }, false, StatusRunning},
		{"fn_error", func(e *Env) error { e.Status = StatusRunning; return errors.New("refused") }, true, StatusCreating},
		{"key_change", func(e *Env) error { e.Name = "b"; return nil }, true, StatusCreating},
		{"index_change", func(e *Env) error { e.Index = 7; return nil }, true, StatusCreating},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := Open(t.TempDir())
			if _, err := s.Insert(ctx, "p/a", func(func(int) bool) (*Env, error) {
				return &Env{Project: "p", Name: "a", Status: StatusCreating}, nil
			}); err != nil {
				t.Fatal(err)
			}
			_, err := s.Update(ctx, "p/a", tt.fn)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Update error = %v, want error %v", err, tt.wantErr)
			}
			e, err := s.Get(ctx, "p/a")
			if err != nil {
				t.Fatal(err)
			}
			if e.Status != tt.want || e.Name != "a" || e.Index != 0 {
				t.Fatalf("after update: %+v, want status %s, name a, index 0", e, tt.want)
			}
		})
	}
	s, _ := Open(t.TempDir())
	if _, err := s.Update(ctx, "p/none", func(*Env) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a missing env: %v, want ErrNotFound", err)
	}
}

func TestDeleteReleasesIndex(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(t.TempDir())
	for _, n := range []string{"a", "b", "c"} {
		if err := insertLowest(s, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "p/b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "p/b"); err != nil {
		t.Fatalf("deleting a missing env: %v", err)
	}
	if _, err := s.Get(ctx, "p/b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v, want ErrNotFound", err)
	}
	if err := insertLowest(s, "d"); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Get(ctx, "p/d"); e == nil || e.Index != 1 {
		t.Fatalf("new env got %+v, want the released index 1", e)
	}
}

// TestPruneClaims: a crash between claiming an index and writing the
// record (or between removing a record and its claim) leaves a claim with
// no record; it holds its index until PruneClaims releases it.
func TestPruneClaims(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	ctx := context.Background()
	if err := os.Symlink("p.gone.json", filepath.Join(dir, claimsDir, "0")); err != nil {
		t.Fatal(err)
	}
	if err := insertLowest(s, "a"); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Get(ctx, "p/a"); e == nil || e.Index != 1 {
		t.Fatalf("got %+v, want index 1 while 0 is claimed", e)
	}
	stale, err := s.PruneClaims(ctx, false)
	if err != nil || !slices.Equal(stale, []int{0}) {
		t.Fatalf("PruneClaims(dry run) = %v, %v; want [0]", stale, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, claimsDir, "0")); err != nil {
		t.Fatalf("dry run removed the claim: %v", err)
	}
	if stale, err := s.PruneClaims(ctx, true); err != nil || !slices.Equal(stale, []int{0}) {
		t.Fatalf("PruneClaims = %v, %v; want [0]", stale, err)
	}
	if err := insertLowest(s, "b"); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Get(ctx, "p/b"); e == nil || e.Index != 0 {
		t.Fatalf("got %+v, want index 0 back", e)
	}
	if stale, err := s.PruneClaims(ctx, true); err != nil || len(stale) != 0 {
		t.Fatalf("PruneClaims with live envs only = %v, %v", stale, err)
	}
}

func TestRejectsNewerSchemaAndGarbage(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"newer_schema", `{"version": 99, "env": {"project": "p", "name": "a"}}`},
		{"garbage", `{"version": 2, "env": `},
		{"no_env", `{"version": 2}`},
		{"wrong_env", `{"version": 2, "env": {"project": "p", "name": "b"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := Open(t.TempDir())
			os.WriteFile(filepath.Join(s.EnvsDir(), "p.a.json"), []byte(tt.content), 0o644)
			ctx := context.Background()
			if _, err := s.Read(ctx); err == nil {
				t.Fatal("Read accepted it")
			}
			if _, err := s.Get(ctx, "p/a"); err == nil {
				t.Fatal("Get accepted it")
			}
			if _, err := s.Update(ctx, "p/a", func(*Env) error { return nil }); err == nil {
				t.Fatal("Update overwrote it")
			}
		})
	}
}

func TestBadKeys(t *testing.T) {
	s, _ := Open(t.TempDir())
	for _, key := range []string{"", "p", "p/", "/a", "p/a/b", "../a", "p/..", "P/a", "p/a.json", "p/é", "p/" + strings.Repeat("a", 64)} {
		if _, err := s.Get(context.Background(), key); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q) = %v, want an invalid key error", key, err)
		}
	}
}

// FuzzRecordPath: whatever the key, a path is either refused or a single
// file directly inside the records directory.
func FuzzRecordPath(f *testing.F) {
	for _, k := range []string{"p/a", "../x", "p/a/../../b", "a-b/c-d", "p/.", "p/a\x00"} {
		f.Add(k)
	}
	s := &Store{dir: "/state"}
	f.Fuzz(func(t *testing.T, key string) {
		p, err := s.recordPath(key)
		if err != nil {
			return
		}
		if filepath.Dir(p) != s.EnvsDir() || !IsRecord(filepath.Base(p)) || strings.Count(filepath.Base(p), ".") != 2 {
			t.Fatalf("key %q gave path %q", key, p)
		}
	})
}

// TestMigratesV1 converts a schema 1 state file into records, keeping the
// old file aside; a v1 file of an unknown version is refused untouched.
func TestMigratesV1(t *testing.T) {
	dir := t.TempDir()
	v1 := `{"version": 1, "envs": {
		"p/a": {"project": "p", "name": "a", "index": 3, "status": "running"},
		"q/b": {"project": "q", "name": "b", "index": 0, "status": "stopped"}}}`
	os.WriteFile(filepath.Join(dir, v1File), []byte(v1), 0o644)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Read(context.Background())
	if err != nil || len(st.Envs) != 2 || st.Envs["p/a"].Index != 3 || st.Envs["q/b"].Status != StatusStopped {
		t.Fatalf("after migration: %+v, %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(dir, v1File+".v1")); err != nil {
		t.Fatalf("old file not kept aside: %v", err)
	}
	if err := insertLowest(s, "c"); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Get(context.Background(), "p/c"); e == nil || e.Index != 1 {
		t.Fatalf("new env got %+v, want index 1 (0 and 3 are claimed)", e)
	}

	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, v1File), []byte(`{"version": 7, "envs": {}}`), 0o644)
	if _, err := Open(dir); err == nil {
		t.Fatal("Open accepted a state file of version 7")
	}
	if _, err := os.Stat(filepath.Join(dir, v1File)); err != nil {
		t.Fatalf("refused file was moved: %v", err)
	}
}

func TestLockHonoursContextAndWakesWaiters(t *testing.T) {
	s, _ := Open(t.TempDir())
	if err := insertLowest(s, "a"); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Update(ctx, "p/a", func(*Env) error { return nil }); err == nil {
		t.Fatal("update ran while another held the lock")
	}
	waited := make(chan error, 1)
	go func() {
		_, err := s.Update(context.Background(), "p/a", func(e *Env) error { e.Status = StatusRunning; return nil })
		waited <- err
	}()
	time.Sleep(20 * time.Millisecond)
	unlock()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiter was not woken when the lock was released")
	}
	if e, _ := s.Get(context.Background(), "p/a"); e.Status != StatusRunning {
		t.Fatalf("status %s after the update", e.Status)
	}
}

// TestUpdateConcurrentLosesNothing: updates of one env from many
// goroutines each see the previous one's result (a changed record makes
// an update start over).
func TestUpdateConcurrentLosesNothing(t *testing.T) {
	s, _ := Open(t.TempDir())
	if err := insertLowest(s, "a"); err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := s.Update(context.Background(), "p/a", func(e *Env) error {
				e.Services = append(e.Services, Service{Name: fmt.Sprint("s", i)})
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	e, err := s.Get(context.Background(), "p/a")
	if err != nil || len(e.Services) != n {
		t.Fatalf("after %d updates: %d services, %v", n, len(e.Services), err)
	}
	if ents, _ := os.ReadDir(s.EnvsDir()); len(ents) != 1 {
		t.Fatalf("records directory holds %d files, want the one record (temp files left?)", len(ents))
	}
}

// TestInsertSameEnvOnce: parallel inserts of one env make it once; the
// others get ErrExists and leave no claim behind.
func TestInsertSameEnvOnce(t *testing.T) {
	s, _ := Open(t.TempDir())
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- insertLowest(s, "one")
		}()
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrExists):
			t.Fatalf("insert: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d inserts succeeded, want 1", ok)
	}
	if claims, _ := os.ReadDir(filepath.Join(s.Dir(), claimsDir)); len(claims) != 1 {
		t.Fatalf("%d index claims, want 1", len(claims))
	}
}

// TestInsertLostClaim: when another create claims the chosen index between
// the read of the claims and the claim, Insert chooses again with that
// index marked used, and the other create keeps it.
func TestInsertLostClaim(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var calls []bool // used(0) as each build saw it
	e, err := s.Insert(context.Background(), Key("p", "late"), func(used func(int) bool) (*Env, error) {
		calls = append(calls, used(0))
		if len(calls) == 1 {
			// The other create claims index 0 first.
			if err := insertLowest(s, "early"); err != nil {
				return nil, err
			}
		}
		i := 0
		for used(i) {
			i++
		}
		return &Env{Project: "p", Name: "late", Index: i}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if e.Index != 1 || len(calls) != 2 || calls[0] || !calls[1] {
		t.Fatalf("index %d after builds that saw index 0 used: %v; want index 1 on the second build", e.Index, calls)
	}
	checkDistinct(t, s, 2)
}
