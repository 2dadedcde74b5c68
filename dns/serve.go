package dns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrAlreadyRunning is returned by [Serve] when another daemon holds the
// pidfile lock.
var ErrAlreadyRunning = errors.New("cilo dns server already running")

// ServeOptions are the daemon's knobs that are not part of [Config].
type ServeOptions struct {
	// Upstreams overrides the host's resolvers (from /etc/resolv.conf);
	// host:port each.
	Upstreams []string
	// Logf receives the daemon's log lines (nil: discarded).
	Logf func(format string, args ...any)
}

// statusInfo is what the daemon publishes in [Config.StatusFile].
type statusInfo struct {
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Updated   time.Time `json:"updated"`
	Listen    []string  `json:"listen"`
	EnvListen []string  `json:"env_listen"`
	Serial    uint32    `json:"serial"`
	Envs      int       `json:"envs"`
	Names     int       `json:"names"`
	Records   int       `json:"records"`
	Contested []string  `json:"contested,omitempty"`
	Upstreams []string  `json:"upstreams"`
}

// Serve runs the DNS daemon until ctx is done: it takes the pidfile lock
// (one instance per run dir), listens on cfg.Addr (and on the resolv.conf
// stub address if `cilo init --force` set one up), serves the zone of the
// state in cfg.StateDir with live updates, and publishes its health
// in cfg.StatusFile.
func Serve(ctx context.Context, cfg Config, o ServeOptions) error {
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	unlock, err := lockPID(cfg)
	if err != nil {
		return err
	}
	defer unlock()
	// A status file left by a daemon that was killed would tell launchers
	// this one is ready before it listens.
	os.Remove(cfg.StatusFile())

	addrs := []string{cfg.Addr}
	if rec, err := readInitRecord(cfg); err == nil && rec.Stub != "" {
		addrs = append(addrs, rec.Stub)
	}
	var upstreams func() []string
	if len(o.Upstreams) > 0 {
		upstreams = func() []string { return o.Upstreams }
	} else {
		var skip []netip.AddrPort
		for _, a := range addrs {
			if ap, err := netip.ParseAddrPort(a); err == nil {
				skip = append(skip, ap)
			}
		}
		upstreams = NewUpstreams("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf", skip).List
	}
	srv := NewServer(Options{
		Suffix:  cfg.Suffix,
		Addrs:   addrs,
		EnvPort: cfg.envPort(),
		Forward: NewForwarder(upstreams, 2*time.Second),
		Logf:    logf,
	})
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Close()
	started := time.Now()
	logf("dns: serving .%s on %v, upstreams %v", strings.Trim(cfg.Suffix, "."), srv.Addrs(), upstreams())

	src := NewStateSource(cfg.StateDir, cfg.Suffix, logf)
	err = src.Run(ctx, func(z *Zone) {
		srv.SetZone(z)
		st := statusInfo{
			PID: os.Getpid(), Started: started, Updated: time.Now(),
			Serial: z.Serial(), Envs: z.Envs(), Names: z.Names(), Records: z.Records(), Contested: z.Contested(),
			Upstreams: upstreams(),
		}
		for _, a := range srv.Addrs() {
			st.Listen = append(st.Listen, a.String())
		}
		for _, a := range srv.EnvAddrs() {
			st.EnvListen = append(st.EnvListen, a.String())
		}
		if err := writeJSON(cfg.StatusFile(), st); err != nil {
			logf("dns: %v", err)
		}
	})
	os.Remove(cfg.StatusFile())
	if err != nil {
		return fmt.Errorf("serve dns zone: %w", err)
	}
	logf("dns: stopped")
	return nil
}

// lockPID takes the daemon's single-instance lock and writes its pid.
func lockPID(cfg Config) (func(), error) {
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	f, err := os.OpenFile(cfg.PIDFile(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open dns pidfile: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid, _ := readPID(cfg)
			return nil, fmt.Errorf("pid %d holds %s: %w", pid, cfg.PIDFile(), ErrAlreadyRunning)
		}
		return nil, fmt.Errorf("lock dns pidfile: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write dns pidfile: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write dns pidfile: %w", err)
	}
	return func() {
		os.Remove(cfg.PIDFile())
		f.Close()
	}, nil
}

// running reports whether a daemon holds the pidfile lock, and its pid.
func running(cfg Config) (int, bool) {
	f, err := os.Open(cfg.PIDFile())
	if err != nil {
		return 0, false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return 0, false
	}
	pid, _ := readPID(cfg)
	return pid, true
}

func readPID(cfg Config) (int, error) {
	b, err := os.ReadFile(cfg.PIDFile())
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// stop asks a running daemon to exit and waits until it has released its
// lock. Used by init and uninstall, never for zone changes.
func stop(ctx context.Context, cfg Config) error {
	pid, ok := running(cfg)
	if !ok {
		return nil
	}
	if pid <= 0 {
		return fmt.Errorf("stop dns server: no pid in %s", cfg.PIDFile())
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop dns server pid %d: %w", pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if _, ok := running(cfg); !ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stop dns server pid %d: %w", pid, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// writeJSON replaces path atomically with v as JSON.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeFileAtomic(path, append(b, '\n'), 0o644)
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
