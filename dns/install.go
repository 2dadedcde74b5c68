package dns

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

const (
	unitName = "cilo-dns.service"
	// DefaultStub is where the daemon also listens once `cilo init
	// --force` has pointed /etc/resolv.conf at it: resolv.conf cannot name
	// a port, and 127.0.0.1:53 is often taken by a local resolver.
	DefaultStub = "127.0.0.153:53"
)

// InitOptions are the knobs of [Init] and [Uninstall].
type InitOptions struct {
	// Exe is the cilo binary the systemd unit runs.
	Exe string
	// Force lets Init rewrite /etc/resolv.conf where systemd-resolved does
	// not run (the previous file is kept and restored by Uninstall).
	Force bool
	// Root is prepended to /etc and /run paths ("" is "/"); tests use a
	// temporary directory.
	Root string
	// Systemctl runs systemctl with args (nil: the real one).
	Systemctl func(ctx context.Context, args ...string) error
	// Stub is the resolv.conf listener for Force (default [DefaultStub]).
	Stub string
	// Out receives what was done and what the user must do.
	Out io.Writer
	// Launch starts the daemon in the background when no systemd runs
	// (nil: a [Launcher] of Exe).
	Launch func(ctx context.Context) error
}

// initRecord is what Init changed, so that Uninstall undoes exactly that.
type initRecord struct {
	Unit           string            `json:"unit,omitempty"`
	ResolvedDropIn string            `json:"resolved_dropin,omitempty"`
	ResolvConf     *resolvConfChange `json:"resolv_conf,omitempty"`
	Stub           string            `json:"stub,omitempty"`
}

type resolvConfChange struct {
	Path      string `json:"path"`
	Backup    string `json:"backup"`                 // copy of the previous content
	LinkedTo  string `json:"linked_to,omitempty"`    // the previous file was this symlink
	WroteHash string `json:"wrote_sha256,omitempty"` // what Init wrote, to notice later edits
}

func readInitRecord(cfg Config) (*initRecord, error) {
	b, err := os.ReadFile(cfg.initRecordFile())
	if err != nil {
		return nil, err
	}
	rec := &initRecord{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("read %s: %w", cfg.initRecordFile(), err)
	}
	return rec, nil
}

func (o *InitOptions) defaults(cfg Config) {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Systemctl == nil {
		o.Systemctl = systemctl
	}
	if o.Stub == "" {
		o.Stub = DefaultStub
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Launch == nil {
		o.Launch = NewLauncher(cfg, o.Exe).EnsureRunning
	}
}

func (o *InitOptions) path(p string) string { return filepath.Join(o.Root, p) }

func systemctl(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// systemdRunning is sd_booted(3): systemd is PID 1.
func systemdRunning(root string) bool {
	fi, err := os.Stat(filepath.Join(root, "run/systemd/system"))
	return err == nil && fi.IsDir()
}

func resolvedRunning(root string) bool {
	fi, err := os.Stat(filepath.Join(root, "run/systemd/resolve"))
	return err == nil && fi.IsDir() && systemdRunning(root)
}

// Init installs the DNS daemon and makes the host resolve the suffix
// through it: a systemd unit where systemd runs (otherwise the daemon is
// started in the background now and on demand later); a systemd-resolved
// drop-in sending only ~suffix to the daemon where resolved runs;
// elsewhere an explanation, or with o.Force a rewritten /etc/resolv.conf
// whose previous content is kept for [Uninstall]. Running it again is
// harmless.
func Init(ctx context.Context, cfg Config, o InitOptions) error {
	o.defaults(cfg)
	rec, err := readInitRecord(cfg)
	if errors.Is(err, fs.ErrNotExist) {
		rec, err = &initRecord{}, nil
	}
	if err != nil {
		return err
	}
	suffix := strings.Trim(cfg.Suffix, ".")
	save := func() error { return writeJSON(cfg.initRecordFile(), rec) }

	if !resolvedRunning(o.Root) {
		if o.Force {
			if err := o.forceResolvConf(cfg, rec); err != nil {
				return err
			}
			if err := save(); err != nil {
				return err
			}
			fmt.Fprintf(o.Out, "/etc/resolv.conf now asks cilo (%s) first; the previous file is kept in %s\n", rec.Stub, rec.ResolvConf.Backup)
		} else if rec.ResolvConf == nil {
			fmt.Fprintf(o.Out, `systemd-resolved is not running here, so the host does not send *.%[1]s to cilo yet.
cilo answers on %[2]s; either point your local resolver at it for %[1]s only,
  dnsmasq:  server=/%[1]s/%[3]s#%[4]s
  unbound:  forward-zone: name: "%[1]s." forward-addr: %[3]s@%[4]s
or run 'cilo init --force' to make /etc/resolv.conf ask cilo first (cilo
forwards every other name to your current resolvers; 'cilo init --uninstall'
restores the file). Inside envs names work without this step.
`, suffix, cfg.Addr, hostOf(cfg.Addr), portOf(cfg.Addr))
		}
	}

	if systemdRunning(o.Root) {
		if err := o.installUnit(ctx, cfg, rec); err != nil {
			return err
		}
		if err := save(); err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "installed and started %s (%s)\n", unitName, rec.Unit)
	} else {
		if err := save(); err != nil {
			return err
		}
		if rec.Stub != "" {
			if err := stop(ctx, cfg); err != nil { // restart it on the stub address too
				return err
			}
		}
		if err := o.Launch(ctx); err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "systemd is not running here: cilo starts its DNS server in the background when needed (log: %s)\n", cfg.LogFile())
	}

	if resolvedRunning(o.Root) {
		if err := o.installDropIn(ctx, cfg, rec); err != nil {
			return err
		}
		if err := save(); err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "systemd-resolved sends *.%s to %s (%s)\n", suffix, cfg.Addr, rec.ResolvedDropIn)
	}
	return nil
}

func hostOf(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().String()
	}
	return addr
}

func portOf(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return fmt.Sprint(ap.Port())
	}
	return "53"
}

func (o *InitOptions) installUnit(ctx context.Context, cfg Config, rec *initRecord) error {
	unit := o.path("/etc/systemd/system/" + unitName)
	var env strings.Builder
	for _, kv := range cfg.environ() {
		fmt.Fprintf(&env, "Environment=%q\n", kv)
	}
	content := fmt.Sprintf(`# Installed by cilo init; removed by cilo init --uninstall.
[Unit]
Description=cilo DNS server (names of cilo environments under .%s)
After=network.target

[Service]
ExecStart=%s dns serve
%sRestart=on-failure
RestartSec=1

[Install]
WantedBy=multi-user.target
`, strings.Trim(cfg.Suffix, "."), o.Exe, env.String())
	if err := writeFileAtomic(unit, []byte(content), 0o644); err != nil {
		return fmt.Errorf("install %s: %w", unitName, err)
	}
	rec.Unit = unit
	if err := stop(ctx, cfg); err != nil { // a background daemon would hold the lock
		return err
	}
	if err := o.Systemctl(ctx, "daemon-reload"); err != nil {
		return err
	}
	if err := o.Systemctl(ctx, "enable", unitName); err != nil {
		return err
	}
	return o.Systemctl(ctx, "restart", unitName)
}

func (o *InitOptions) installDropIn(ctx context.Context, cfg Config, rec *initRecord) error {
	path := o.path("/etc/systemd/resolved.conf.d/cilo.conf")
	content := fmt.Sprintf("# Installed by cilo init; removed by cilo init --uninstall.\n[Resolve]\nDNS=%s\nDomains=~%s\n",
		cfg.Addr, strings.Trim(cfg.Suffix, "."))
	if err := writeFileAtomic(path, []byte(content), 0o644); err != nil {
		return fmt.Errorf("install systemd-resolved drop-in: %w", err)
	}
	rec.ResolvedDropIn = path
	return o.Systemctl(ctx, "try-restart", "systemd-resolved.service")
}

// forceResolvConf points /etc/resolv.conf at the stub, keeping the old
// nameservers after it as fallbacks and the old file as a backup.
func (o *InitOptions) forceResolvConf(cfg Config, rec *initRecord) error {
	path := o.path("/etc/resolv.conf")
	cur, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if rec.ResolvConf != nil && hash(cur) == rec.ResolvConf.WroteHash {
		return nil // already ours
	}
	stub, err := netip.ParseAddrPort(o.Stub)
	if err != nil || stub.Port() != 53 {
		return fmt.Errorf("resolv.conf stub %q must be an address with port 53", o.Stub)
	}
	change := &resolvConfChange{Path: path, Backup: filepath.Join(cfg.StateDir, "resolv.conf.before-cilo")}
	if target, err := os.Readlink(path); err == nil {
		change.LinkedTo = target
	}
	if err := writeFileAtomic(change.Backup, cur, 0o644); err != nil {
		return fmt.Errorf("back up %s: %w", path, err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by cilo init --force; cilo init --uninstall restores the previous file\n# (kept in %s).\n", change.Backup)
	fmt.Fprintf(&b, "nameserver %s\n", stub.Addr())
	for _, line := range strings.Split(string(cur), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (f[0] == "nameserver" || f[0] == "search" || f[0] == "domain" || f[0] == "options") {
			if f[0] == "nameserver" && len(f) > 1 && f[1] == stub.Addr().String() {
				continue
			}
			b.WriteString(line + "\n")
		}
	}
	if change.LinkedTo != "" {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("replace %s: %w", path, err)
		}
	}
	if err := replaceFile(path, b.Bytes()); err != nil {
		return err
	}
	change.WroteHash = hash(b.Bytes())
	rec.ResolvConf = change
	rec.Stub = stub.String()
	return nil
}

func hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Uninstall undoes what [Init] did, as recorded, and stops the daemon.
// A resolv.conf edited since Init is left alone (with a warning).
func Uninstall(ctx context.Context, cfg Config, o InitOptions) error {
	o.defaults(cfg)
	rec, err := readInitRecord(cfg)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintln(o.Out, "cilo init has not changed anything here")
		return stop(ctx, cfg)
	}
	if err != nil {
		return err
	}
	var errs []error
	if rec.Unit != "" {
		if err := o.Systemctl(ctx, "disable", "--now", unitName); err != nil {
			errs = append(errs, err)
		}
		if err := os.Remove(rec.Unit); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", rec.Unit, err))
		}
		if err := o.Systemctl(ctx, "daemon-reload"); err != nil {
			errs = append(errs, err)
		}
		fmt.Fprintf(o.Out, "removed %s\n", unitName)
	}
	if rec.ResolvedDropIn != "" {
		if err := os.Remove(rec.ResolvedDropIn); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", rec.ResolvedDropIn, err))
		}
		if err := o.Systemctl(ctx, "try-restart", "systemd-resolved.service"); err != nil {
			errs = append(errs, err)
		}
		fmt.Fprintf(o.Out, "removed %s\n", rec.ResolvedDropIn)
	}
	if c := rec.ResolvConf; c != nil {
		if err := restoreResolvConf(c, o.Out); err != nil {
			errs = append(errs, err)
		}
	}
	if err := stop(ctx, cfg); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstall dns: %w", err)
	}
	return os.Remove(cfg.initRecordFile())
}

func restoreResolvConf(c *resolvConfChange, out io.Writer) error {
	cur, err := os.ReadFile(c.Path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", c.Path, err)
	}
	if hash(cur) != c.WroteHash {
		fmt.Fprintf(out, "%s changed since cilo init --force: left as it is (the previous file is in %s)\n", c.Path, c.Backup)
		return nil
	}
	if c.LinkedTo != "" {
		tmp := c.Path + ".cilo-restore"
		os.Remove(tmp)
		if err := os.Symlink(c.LinkedTo, tmp); err != nil {
			return fmt.Errorf("restore %s: %w", c.Path, err)
		}
		if err := os.Rename(tmp, c.Path); err != nil {
			return fmt.Errorf("restore %s: %w", c.Path, err)
		}
	} else {
		old, err := os.ReadFile(c.Backup)
		if err != nil {
			return fmt.Errorf("restore %s: %w", c.Path, err)
		}
		if err := replaceFile(c.Path, old); err != nil {
			return fmt.Errorf("restore %s: %w", c.Path, err)
		}
	}
	os.Remove(c.Backup)
	fmt.Fprintf(out, "restored %s\n", c.Path)
	return nil
}

// replaceFile writes path by rename where it can and in place where the
// file is a mount point (containers bind-mount /etc/resolv.conf), where
// rename fails with EBUSY.
func replaceFile(path string, b []byte) error {
	if err := writeFileAtomic(path, b, 0o644); err == nil {
		return nil
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
