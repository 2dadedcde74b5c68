package overlayfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilo-dev/cilo/overlayfs/loopfs"
)

// assertEmptyRoot fails when a failed Create left anything behind.
func assertEmptyRoot(t *testing.T, root string) {
	t.Helper()
	if pids := watcherPIDs(root); len(pids) > 0 {
		t.Errorf("watchers left running: %v", pids)
	}
	for _, d := range []string{dirWS, dirBases, dirTmp} {
		ents, err := os.ReadDir(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "probe-") {
				continue
			}
			t.Errorf("left behind: %s/%s", d, e.Name())
		}
	}
}

func TestCreateBadInput(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	tests := []struct {
		name    string
		setup   func(t *testing.T) (m *Manager, src string, o CreateOptions)
		wantErr error  // class, when there is one
		wantMsg string // what the message must name
	}{
		{
			name: "invalid_exclude_glob",
			setup: func(t *testing.T) (*Manager, string, CreateOptions) {
				return newTestManager(t), gitSource(t), CreateOptions{Exclude: []string{"node_modules", "[unclosed"}}
			},
			wantErr: ErrBadPattern,
			wantMsg: "[unclosed",
		},
		{
			name: "source_missing",
			setup: func(t *testing.T) (*Manager, string, CreateOptions) {
				return newTestManager(t), filepath.Join(t.TempDir(), "nope"), CreateOptions{}
			},
			wantErr: os.ErrNotExist,
			wantMsg: "nope",
		},
		{
			// Its path goes into JSON metadata, which holds only UTF-8.
			name: "source_path_not_utf8",
			setup: func(t *testing.T) (*Manager, string, CreateOptions) {
				src := filepath.Join(t.TempDir(), "caf\xe9")
				if err := os.Mkdir(src, 0o755); err != nil {
					t.Fatal(err)
				}
				return newTestManager(t), src, CreateOptions{}
			},
			wantErr: ErrSourcePath,
			wantMsg: "UTF-8",
		},
		{
			name: "disk_full",
			setup: func(t *testing.T) (*Manager, string, CreateOptions) {
				dir := t.TempDir()
				mnt := filepath.Join(dir, "mnt")
				if err := os.Mkdir(mnt, 0o755); err != nil {
					t.Fatal(err)
				}
				fs, err := loopfs.Mount(ctx, filepath.Join(dir, "small.img"), 16<<20, "ext4", []string{"-q", "-F"}, mnt)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if err := fs.Close(); err != nil {
						t.Error(err)
					}
				})
				m, err := New(filepath.Join(mnt, "root"), WithLogf(t.Logf))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cleanupManager(t, m) })
				src := gitSource(t)
				big := make([]byte, 32<<20)
				if err := os.WriteFile(filepath.Join(src, "big.bin"), big, 0o644); err != nil {
					t.Fatal(err)
				}
				return m, src, CreateOptions{}
			},
			wantErr: syscall.ENOSPC,
			wantMsg: "big.bin",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, src, o := tt.setup(t)
			ws, err := m.Create(ctx, "bad", src, o)
			if err == nil {
				t.Fatalf("Create succeeded: %+v", ws)
			}
			t.Logf("error: %v", err)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v is not %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not name %q", err, tt.wantMsg)
			}
			assertEmptyRoot(t, m.root)
		})
	}
}

// helperEnv makes the test binary act as an unprivileged cilo for
// TestUnreadableSource: root reads everything, so unreadable places only
// exist for another user.
const helperEnv = "OVERLAYFS_TEST_HELPER"

// watcherEnv makes the test binary act as a watcher process: tests'
// Managers start it as the CLI starts `cilo workspace-watch`.
const watcherEnv = "OVERLAYFS_TEST_WATCHER"

func TestMain(m *testing.M) {
	if args := os.Getenv(helperEnv); args != "" {
		os.Exit(helperMain(args))
	}
	if os.Getenv(watcherEnv) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := RunWatcher(ctx, func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helperMain(args string) int {
	var a struct{ Root, Source string }
	if err := json.Unmarshal([]byte(args), &a); err != nil {
		fmt.Println(err)
		return 2
	}
	m, err := New(a.Root, WithForceMode(ModeCopy))
	if err != nil {
		fmt.Println("new:", err)
		return 2
	}
	_, err = m.Create(context.Background(), "unreadable", a.Source, CreateOptions{})
	if err == nil {
		fmt.Println("created")
		return 0
	}
	fmt.Println(err)
	return 1
}

func TestUnreadableSource(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	openUp(t, dir)
	src := filepath.Join(dir, "src")
	writeFile(t, src, "ok.txt", "fine\n", 0o644)
	writeFile(t, src, "locked/secret.txt", "no\n", 0o644)
	chownTree(t, src, testUID)
	// Owned by root and closed: the user cannot list it.
	if err := os.Lchown(filepath.Join(src, "locked"), 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "locked"), 0o700); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(root, testUID, testUID); err != nil {
		t.Fatal(err)
	}
	// The test binary may sit in a directory only root can enter.
	bin := filepath.Join(dir, "helper.test")
	copyExecutable(t, os.Args[0], bin)
	args, _ := json.Marshal(map[string]string{"Root": root, "Source": src})
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(args))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: testUID, Gid: testUID}}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("helper: %v: %s", err, out)
	}
	msg := string(out)
	if !strings.Contains(msg, "permission denied") || !strings.Contains(msg, "locked") {
		t.Errorf("error %q does not say what could not be read", msg)
	}
	assertEmptyRoot(t, root)
}

func copyExecutable(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCreateCancelled: an interrupted create (Ctrl-C during a first
// snapshot) leaves nothing behind either.
func TestCreateCancelled(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		after time.Duration
	}{
		{"before_start", 0},
		{"during_snapshot", 5 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "src")
			for i := 0; i < 2000; i++ {
				writeFile(t, src, fmt.Sprintf("d%02d/f%04d.txt", i%50, i), strings.Repeat("x", 4096), 0o644)
			}
			m := newTestManager(t)
			ctx, cancel := context.WithTimeout(context.Background(), tt.after)
			defer cancel()
			if ws, err := m.Create(ctx, "cancelled", src, CreateOptions{}); err == nil {
				// Fast machines may finish first; that is not a failure of cleanup.
				t.Logf("create finished before the cancel: %s", ws.Path)
				return
			} else if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %v is not the context's", err)
			}
			assertEmptyRoot(t, m.root)
		})
	}
}
