package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Config is every path and range cilo uses. Each test package runs against
// its own Config (own roots, own slice of the pool, own name prefix), so it
// never collides with another test or with a user's envs.
type Config struct {
	StateDir            string       `yaml:"state_dir"`            // persistent state and workspaces
	RunDir              string       `yaml:"run_dir"`              // runtime files (resolv.conf per env, pidfiles)
	Pool                netip.Prefix `yaml:"-" json:"-"`           // env subnets are /24s of this (read as "pool" by Load)
	Prefix              string       `yaml:"prefix"`               // names of interfaces, namespaces and the nft table
	DNSSuffix           string       `yaml:"dns_suffix"`           // envs answer as <service>.<env>.<suffix>
	DNSAddr             string       `yaml:"dns_addr"`             // host listener of the DNS server
	ContainerdAddress   string       `yaml:"containerd_address"`   // containerd's socket
	ContainerdNamespace string       `yaml:"containerd_namespace"` // containerd namespace of cilo's containers
}

// Default is what a user gets with no flags, variables or config file.
func Default() Config {
	return Config{
		StateDir:            "/var/lib/cilo",
		RunDir:              "/run/cilo",
		Pool:                netip.MustParsePrefix("10.224.0.0/16"),
		Prefix:              "cilo",
		DNSSuffix:           "test",
		DNSAddr:             "127.0.0.1:5354",
		ContainerdAddress:   "/run/containerd/containerd.sock",
		ContainerdNamespace: "cilo",
	}
}

// ConfigEnv names the variables that override the config file, in the order
// the documentation lists them.
var configEnv = []struct {
	name string
	set  func(*Config, string) error
}{
	{"CILO_STATE_DIR", func(c *Config, v string) error { c.StateDir = v; return nil }},
	{"CILO_RUN_DIR", func(c *Config, v string) error { c.RunDir = v; return nil }},
	{"CILO_POOL", func(c *Config, v string) error { return c.SetPool(v) }},
	{"CILO_PREFIX", func(c *Config, v string) error { c.Prefix = v; return nil }},
	{"CILO_DNS_SUFFIX", func(c *Config, v string) error { c.DNSSuffix = v; return nil }},
	{"CILO_DNS_ADDR", func(c *Config, v string) error { c.DNSAddr = v; return nil }},
	{"CONTAINERD_ADDRESS", func(c *Config, v string) error { c.ContainerdAddress = v; return nil }},
	{"CILO_CONTAINERD_NAMESPACE", func(c *Config, v string) error { c.ContainerdNamespace = v; return nil }},
}

// DefaultFile is read when CILO_CONFIG does not name another file.
const DefaultFile = "/etc/cilo/config.yml"

// A Decoder fills v from the YAML document b, read from file. cilo-core
// parses YAML; the front, which links no YAML parser so that it starts
// fast, reads what cilo-core parsed before (package parsed).
type Decoder func(file string, b []byte, v any) error

// ParsedDir is where decoded config files are kept for the front. It
// depends on the environment only, since the config file itself may name
// another run directory.
func ParsedDir(getenv func(string) string) string {
	dir := getenv("CILO_RUN_DIR")
	if dir == "" {
		dir = Default().RunDir
	}
	return filepath.Join(dir, "parsed")
}

// Load builds the config from defaults, then the config file (CILO_CONFIG
// or /etc/cilo/config.yml, if present), then the environment. Flags are
// applied by the caller afterwards.
func Load(getenv func(string) string, decode Decoder) (Config, error) {
	c := Default()
	file := getenv("CILO_CONFIG")
	explicit := file != ""
	if !explicit {
		file = DefaultFile
	}
	b, err := os.ReadFile(file)
	switch {
	case err == nil && len(b) == 0:
		// Nothing to decode (CILO_CONFIG=/dev/null says "defaults").
	case err == nil:
		var raw struct {
			Config `yaml:",inline"`
			Pool   string `yaml:"pool"`
		}
		raw.Config = c
		if err := decode(file, b, &raw); err != nil {
			return c, fmt.Errorf("read config %s: %w", file, err)
		}
		c = raw.Config
		if raw.Pool != "" {
			if err := c.SetPool(raw.Pool); err != nil {
				return c, fmt.Errorf("read config %s: %w", file, err)
			}
		}
	case errors.Is(err, fs.ErrNotExist) && !explicit:
	default:
		return c, fmt.Errorf("read config: %w", err)
	}
	for _, e := range configEnv {
		if v := getenv(e.name); v != "" {
			if err := e.set(&c, v); err != nil {
				return c, fmt.Errorf("%s: %w", e.name, err)
			}
		}
	}
	return c, nil
}

// SetPool parses and sets the address pool.
func (c *Config) SetPool(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("address pool %q: %w", s, err)
	}
	c.Pool = p.Masked()
	return nil
}

// Validate reports the first setting cilo cannot work with.
func (c Config) Validate() error {
	switch {
	case !filepath.IsAbs(c.StateDir):
		return fmt.Errorf("state dir %q must be an absolute path", c.StateDir)
	case !filepath.IsAbs(c.RunDir):
		return fmt.Errorf("run dir %q must be an absolute path", c.RunDir)
	case !c.Pool.IsValid() || !c.Pool.Addr().Is4():
		return fmt.Errorf("address pool %s must be an IPv4 prefix such as 10.224.0.0/16", c.Pool)
	case c.Pool.Bits() > 24 || c.Pool.Bits() < 8:
		return fmt.Errorf("address pool %s must be between a /8 and a /24 (each env takes a /24)", c.Pool)
	case len(c.Prefix) == 0 || len(c.Prefix) > 5:
		return fmt.Errorf("name prefix %q must be 1 to 5 characters (interface names are at most 15 bytes)", c.Prefix)
	}
	for _, r := range c.Prefix {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return fmt.Errorf("name prefix %q may only hold a-z and 0-9", c.Prefix)
		}
	}
	if err := validateSuffix(c.DNSSuffix); err != nil {
		return err
	}
	if _, port, err := splitHostPort(c.DNSAddr); err != nil || port == 0 {
		return fmt.Errorf("dns address %q must be host:port", c.DNSAddr)
	}
	return nil
}

func validateSuffix(s string) error {
	if s == "" {
		return errors.New("dns suffix must not be empty")
	}
	for _, l := range strings.Split(s, ".") {
		if err := validateLabel(l); err != nil {
			return fmt.Errorf("dns suffix %q: %v", s, err)
		}
	}
	return nil
}

func splitHostPort(s string) (string, uint16, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return "", 0, err
	}
	return ap.Addr().String(), ap.Port(), nil
}

// Environ is the config as the variables LoadConfig reads, so that a cilo
// program started by this one (the DNS server, cilo-compose) gets exactly
// this config, flags included.
func (c Config) Environ() []string {
	return []string{
		"CILO_STATE_DIR=" + c.StateDir,
		"CILO_RUN_DIR=" + c.RunDir,
		"CILO_POOL=" + c.Pool.String(),
		"CILO_PREFIX=" + c.Prefix,
		"CILO_DNS_SUFFIX=" + c.DNSSuffix,
		"CILO_DNS_ADDR=" + c.DNSAddr,
		"CONTAINERD_ADDRESS=" + c.ContainerdAddress,
		"CILO_CONTAINERD_NAMESPACE=" + c.ContainerdNamespace,
	}
}

// EnvRunDir is where an env's runtime files live (its resolv.conf, hosts).
func (c Config) EnvRunDir(project, env string) string {
	return filepath.Join(c.RunDir, "envs", project, env)
}

// DNSPort is the port of the host listener.
func (c Config) DNSPort() int {
	_, p, _ := splitHostPort(c.DNSAddr)
	return int(p)
}

// Program locates one of cilo's programs (cilo-core, cilo-compose): beside
// the running one, so that a build directory or an install prefix is
// self-contained, else on PATH.
func Program(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s is neither beside cilo nor on PATH: install it with cilo (make build writes bin/%s)", name, name)
}
