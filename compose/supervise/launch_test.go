package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeEnv makes the test binary a stand-in supervisor: it takes the pid
// lock of the run dir named by the variable and waits for SIGTERM, or,
// with the value "fail", exits at once with an error.
const fakeEnv = "CILO_SUPERVISE_TEST_FAKE"

func TestMain(m *testing.M) {
	if v := os.Getenv(fakeEnv); v != "" {
		os.Exit(fakeSupervisor(v))
	}
	os.Exit(m.Run())
}

func fakeSupervisor(dir string) int {
	if dir == "fail" {
		fmt.Fprintln(os.Stderr, "fake supervisor: failing as asked")
		return 1
	}
	fmt.Println("fake supervisor started")
	release, err := lockPID(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer release()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return 0
}

// fakeLauncher launches the fake supervisor for a run dir of its own and
// stops it when the test ends.
func fakeLauncher(t *testing.T, mode string) *Launcher {
	t.Helper()
	dir := t.TempDir()
	if mode == "" {
		mode = dir
	}
	l := &Launcher{RunDir: dir, LogFile: filepath.Join(dir, "log", "supervise.log"),
		Command: []string{os.Args[0]}, Env: []string{fakeEnv + "=" + mode}}
	t.Cleanup(func() {
		b, err := os.ReadFile(filepath.Join(dir, pidFile))
		if err != nil {
			return
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid > 1 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		for i := 0; i < 100 && running(filepath.Join(dir, pidFile)); i++ {
			time.Sleep(10 * time.Millisecond)
		}
	})
	return l
}

func starts(t *testing.T, l *Launcher) int {
	t.Helper()
	b, _ := os.ReadFile(l.LogFile)
	return strings.Count(string(b), "fake supervisor started")
}

func TestAcquireStartsOneSupervisor(t *testing.T) {
	l := fakeLauncher(t, "")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := l.Acquire(ctx)
			if err == nil {
				release()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if !running(filepath.Join(l.RunDir, pidFile)) {
		t.Fatal("no supervisor holds the pid file after Acquire")
	}
	if n := starts(t, l); n != 1 {
		t.Fatalf("%d supervisors started by 8 concurrent Acquires, want 1", n)
	}
	release, err := l.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if n := starts(t, l); n != 1 {
		t.Fatalf("Acquire with a supervisor running started another (%d in all)", n)
	}
}

// TestHoldKeepsSupervisor checks the protocol an idle supervisor follows
// before it exits: it may only when no cilo up holds the hold lock.
func TestHoldKeepsSupervisor(t *testing.T) {
	l := fakeLauncher(t, "")
	release, err := l.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hold := filepath.Join(l.RunDir, holdFile)
	if unlock, ok := tryFlock(hold); ok {
		unlock()
		release()
		t.Fatal("supervisor could take the hold lock while an up held it")
	}
	release()
	unlock, ok := tryFlock(hold)
	if !ok {
		t.Fatal("supervisor could not take the hold lock once released")
	}
	unlock()
}

func TestAcquireReportsFailingSupervisor(t *testing.T) {
	l := fakeLauncher(t, "fail")
	_, err := l.Acquire(context.Background())
	if err == nil {
		t.Fatal("Acquire succeeded with a supervisor that exits at once")
	}
	if !strings.Contains(err.Error(), l.LogFile) {
		t.Fatalf("error %q does not name the log %s", err, l.LogFile)
	}
	if b, _ := os.ReadFile(l.LogFile); !strings.Contains(string(b), "failing as asked") {
		t.Fatalf("log %q lacks the supervisor's output", b)
	}
	// The hold lock is not kept after a failure.
	unlock, ok := tryFlock(filepath.Join(l.RunDir, holdFile))
	if !ok {
		t.Fatal("hold lock still taken after a failed Acquire")
	}
	unlock()
}

func TestSecondSupervisorRefused(t *testing.T) {
	dir := t.TempDir()
	release, err := lockPID(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockPID(dir)
	if !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second lockPID: %v, want ErrAlreadyRunning", err)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(os.Getpid())) {
		t.Fatalf("error %q does not name the running pid", err)
	}
	release()
	if _, err := os.Stat(filepath.Join(dir, pidFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file left after release: %v", err)
	}
	if running(filepath.Join(dir, pidFile)) {
		t.Fatal("running after release")
	}
}
