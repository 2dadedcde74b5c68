package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// TestMain lets the test binary stand in for `cilo dns serve`, so the
// launcher is tested end to end: it starts os.Args[0] with "dns serve"
// and the CILO_* variables, as it starts the real cilo.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "dns" && os.Args[2] == "serve" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		cfg := Config{StateDir: os.Getenv("CILO_STATE_DIR"), RunDir: os.Getenv("CILO_RUN_DIR"),
			Addr: os.Getenv("CILO_DNS_ADDR"), Suffix: os.Getenv("CILO_DNS_SUFFIX")}
		err := Serve(ctx, cfg, ServeOptions{
			Upstreams: strings.Split(os.Getenv(UpstreamsEnv), ","),
			Logf:      func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format(time.RFC3339Nano)+" "+f+"\n", a...) },
		})
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func freePort(t *testing.T) string {
	t.Helper()
	for try := 0; try < 20; try++ {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		ln, err := net.Listen("tcp4", addr)
		pc.Close()
		if err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free loopback port")
	return ""
}

func testConfig(t *testing.T) Config {
	dir := t.TempDir()
	return Config{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), Addr: freePort(t), Suffix: "test"}
}

func TestLauncher(t *testing.T) {
	cfg := testConfig(t)
	cfg.Upstreams = []string{deadUpstream(t)}
	ctx := context.Background()
	t.Cleanup(func() {
		if err := stop(context.Background(), cfg); err != nil {
			t.Errorf("stop the daemon: %v", err)
		}
		if b, err := os.ReadFile(cfg.LogFile()); err == nil {
			t.Logf("daemon log:\n%s", b)
		}
	})

	st, err := GetStatus(ctx, cfg)
	if err != nil || st.Running || st.Healthy {
		t.Fatalf("status before start: %+v, %v", st, err)
	}

	// Concurrent callers start one daemon.
	l := NewLauncher(cfg, os.Args[0])
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- l.EnsureRunning(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	pid, ok := running(cfg)
	if !ok || pid <= 0 || pid == os.Getpid() {
		t.Fatalf("daemon not running after EnsureRunning: pid %d", pid)
	}
	if err := l.EnsureRunning(ctx); err != nil {
		t.Fatal(err)
	}
	if again, _ := running(cfg); again != pid {
		t.Fatalf("EnsureRunning started a second daemon: %d, then %d", pid, again)
	}

	// A second daemon refuses to start.
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := Serve(sctx, cfg, ServeOptions{}); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Serve: %v, want ErrAlreadyRunning", err)
	}

	// The status shows the zone, and follows the state.
	store, err := state.Open(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	e := testEnv("shop", "dev", 1, svc("db", "10.250.1.11"), svc("web", "10.250.1.10"))
	e.Gateway = netip.Addr{} // no env listener on :53 from this test
	putEnv(t, store, e)
	deadline := time.Now().Add(2 * time.Second)
	for {
		st, err = GetStatus(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if st.Records > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !st.Running || !st.Healthy || st.PID != pid || st.Envs != 1 || st.Records != 6 || len(st.EnvListen) != 0 ||
		!slices.Equal(st.Upstreams, cfg.Upstreams) {
		t.Fatalf("status %+v", st)
	}
	if _, err := os.Stat(cfg.LogFile()); err != nil {
		t.Fatalf("no log file: %v", err)
	}

	if err := stop(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := running(cfg); ok {
		t.Fatal("daemon still running after stop")
	}
}

// fakeRoot is a filesystem root for Init: what systemd (and resolved)
// leave in /run when they run, and an /etc/resolv.conf.
func fakeRoot(t *testing.T, systemd, resolved bool, resolvConf string) string {
	t.Helper()
	root := t.TempDir()
	for dir, want := range map[string]bool{"run/systemd/system": systemd, "run/systemd/resolve": resolved, "etc": true} {
		if want {
			if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if resolvConf != "" {
		if err := os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte(resolvConf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

type fakeSystem struct {
	calls    []string
	launched int
}

func (f *fakeSystem) opts(root string, force bool, out *strings.Builder) InitOptions {
	return InitOptions{
		Exe: "/usr/local/bin/cilo", Force: force, Root: root, Out: out, Stub: "127.0.0.153:53",
		Systemctl: func(ctx context.Context, args ...string) error {
			f.calls = append(f.calls, strings.Join(args, " "))
			return nil
		},
		Launch: func(ctx context.Context) error { f.launched++; return nil },
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInitSystemdResolved(t *testing.T) {
	cfg := testConfig(t)
	root := fakeRoot(t, true, true, "nameserver 127.0.0.53\n")
	fs := &fakeSystem{}
	var out strings.Builder
	ctx := context.Background()
	for i := 0; i < 2; i++ { // running it again is harmless
		if err := Init(ctx, cfg, fs.opts(root, false, &out)); err != nil {
			t.Fatal(err)
		}
	}
	unit := readFile(t, filepath.Join(root, "etc/systemd/system/cilo-dns.service"))
	for _, want := range []string{"ExecStart=/usr/local/bin/cilo dns serve", `Environment="CILO_STATE_DIR=` + cfg.StateDir + `"`,
		`Environment="CILO_DNS_ADDR=` + cfg.Addr + `"`, "WantedBy=multi-user.target"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	dropin := readFile(t, filepath.Join(root, "etc/systemd/resolved.conf.d/cilo.conf"))
	if want := "[Resolve]\nDNS=" + cfg.Addr + "\nDomains=~test\n"; !strings.HasSuffix(dropin, want) {
		t.Errorf("drop-in:\n%s\nwant it to end with\n%s", dropin, want)
	}
	if got := readFile(t, filepath.Join(root, "etc/resolv.conf")); got != "nameserver 127.0.0.53\n" {
		t.Errorf("resolv.conf changed under systemd-resolved: %q", got)
	}
	wantCalls := "daemon-reload|enable cilo-dns.service|restart cilo-dns.service|try-restart systemd-resolved.service"
	if got := strings.Join(fs.calls[:4], "|"); got != wantCalls {
		t.Errorf("systemctl calls %s, want %s", got, wantCalls)
	}
	if fs.launched != 0 {
		t.Errorf("launched a background daemon where systemd runs")
	}

	fs.calls = nil
	if err := Uninstall(ctx, cfg, fs.opts(root, false, &out)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"etc/systemd/system/cilo-dns.service", "etc/systemd/resolved.conf.d/cilo.conf"} {
		if _, err := os.Stat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
	if _, err := os.Stat(cfg.initRecordFile()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("init record left behind")
	}
	wantCalls = "disable --now cilo-dns.service|daemon-reload|try-restart systemd-resolved.service"
	if got := strings.Join(fs.calls, "|"); got != wantCalls {
		t.Errorf("uninstall systemctl calls %s, want %s", got, wantCalls)
	}
}

func TestInitWithoutSystemd(t *testing.T) {
	const orig = "# from DHCP\nsearch lan\nnameserver 192.0.2.1\nnameserver 192.0.2.2\noptions edns0\n"
	ctx := context.Background()

	t.Run("explains_without_force", func(t *testing.T) {
		cfg := testConfig(t)
		root := fakeRoot(t, false, false, orig)
		fs := &fakeSystem{}
		var out strings.Builder
		if err := Init(ctx, cfg, fs.opts(root, false, &out)); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(root, "etc/resolv.conf")); got != orig {
			t.Errorf("resolv.conf changed without --force:\n%s", got)
		}
		if !strings.Contains(out.String(), "cilo init --force") || !strings.Contains(out.String(), "server=/test/127.0.0.1#") {
			t.Errorf("no explanation of the manual step:\n%s", out.String())
		}
		if fs.launched != 1 || len(fs.calls) != 0 {
			t.Errorf("launched %d, systemctl %v", fs.launched, fs.calls)
		}
		if err := Uninstall(ctx, cfg, fs.opts(root, false, &out)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("force_rewrites_and_uninstall_restores", func(t *testing.T) {
		cfg := testConfig(t)
		root := fakeRoot(t, false, false, orig)
		fs := &fakeSystem{}
		var out strings.Builder
		for i := 0; i < 2; i++ {
			if err := Init(ctx, cfg, fs.opts(root, true, &out)); err != nil {
				t.Fatal(err)
			}
		}
		got := readFile(t, filepath.Join(root, "etc/resolv.conf"))
		if ns := Nameservers([]byte(got)); len(ns) != 3 || ns[0].String() != "127.0.0.153" || ns[1].String() != "192.0.2.1" {
			t.Errorf("rewritten resolv.conf:\n%s", got)
		}
		if !strings.Contains(got, "search lan\n") || !strings.Contains(got, "options edns0\n") {
			t.Errorf("search and options lost:\n%s", got)
		}
		rec, err := readInitRecord(cfg)
		if err != nil || rec.Stub != "127.0.0.153:53" {
			t.Fatalf("record %+v, %v", rec, err)
		}
		if readFile(t, rec.ResolvConf.Backup) != orig {
			t.Errorf("backup is not the original")
		}
		if err := Uninstall(ctx, cfg, fs.opts(root, true, &out)); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(root, "etc/resolv.conf")); got != orig {
			t.Errorf("not restored:\n%s", got)
		}
	})

	t.Run("symlink_restored", func(t *testing.T) {
		cfg := testConfig(t)
		root := fakeRoot(t, false, false, "")
		target := filepath.Join(root, "run-resolvconf")
		os.WriteFile(target, []byte(orig), 0o644)
		if err := os.Symlink(target, filepath.Join(root, "etc/resolv.conf")); err != nil {
			t.Fatal(err)
		}
		fs := &fakeSystem{}
		var out strings.Builder
		if err := Init(ctx, cfg, fs.opts(root, true, &out)); err != nil {
			t.Fatal(err)
		}
		if readFile(t, target) != orig {
			t.Errorf("the symlink's target was written through")
		}
		if err := Uninstall(ctx, cfg, fs.opts(root, true, &out)); err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(filepath.Join(root, "etc/resolv.conf")); err != nil || got != target {
			t.Errorf("symlink not restored: %q, %v", got, err)
		}
	})

	t.Run("edited_after_init_left_alone", func(t *testing.T) {
		cfg := testConfig(t)
		root := fakeRoot(t, false, false, orig)
		fs := &fakeSystem{}
		var out strings.Builder
		if err := Init(ctx, cfg, fs.opts(root, true, &out)); err != nil {
			t.Fatal(err)
		}
		const edited = "nameserver 198.51.100.1\n"
		os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte(edited), 0o644)
		if err := Uninstall(ctx, cfg, fs.opts(root, true, &out)); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(root, "etc/resolv.conf")); got != edited {
			t.Errorf("a file edited since init was overwritten: %q", got)
		}
		if !strings.Contains(out.String(), "left as it is") {
			t.Errorf("no warning:\n%s", out.String())
		}
	})
}

func TestChildEnvironment(t *testing.T) {
	cfg := Config{StateDir: "/s", RunDir: "/r", Addr: "127.0.0.1:5354", Suffix: "test", Upstreams: []string{"127.0.0.1:5399"}}
	tests := []struct {
		name   string
		parent []string
		want   []string
	}{
		{"config_wins", []string{"PATH=/bin", "CILO_STATE_DIR=/other", "CILO_CONFIG=/etc/c.yml"},
			[]string{"PATH=/bin", "CILO_CONFIG=/etc/c.yml", "CILO_STATE_DIR=/s", "CILO_RUN_DIR=/r", "CILO_DNS_ADDR=127.0.0.1:5354", "CILO_DNS_SUFFIX=test", "CILO_DNS_UPSTREAMS=127.0.0.1:5399"}},
		{"empty_parent", nil,
			[]string{"CILO_STATE_DIR=/s", "CILO_RUN_DIR=/r", "CILO_DNS_ADDR=127.0.0.1:5354", "CILO_DNS_SUFFIX=test", "CILO_DNS_UPSTREAMS=127.0.0.1:5399"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := withEnv(tt.parent, cfg.environ()); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v\nwant %v", got, tt.want)
			}
		})
	}
}
