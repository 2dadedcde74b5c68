package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v4"
)

func yamlDecode(_ string, b []byte, v any) error { return yaml.Unmarshal(b, v) }

func TestLoadConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yml")
	os.WriteFile(file, []byte("pool: 10.50.0.0/12\nprefix: abc\ndns_suffix: dev.local\n"), 0o644)
	tests := []struct {
		name   string
		env    map[string]string
		pool   string
		prefix string
		suffix string
		state  string
	}{
		{"defaults", map[string]string{"CILO_CONFIG": "/dev/null"}, "10.224.0.0/16", "cilo", "test", "/var/lib/cilo"},
		{"file", map[string]string{"CILO_CONFIG": file}, "10.48.0.0/12", "abc", "dev.local", "/var/lib/cilo"},
		{"env_over_file", map[string]string{"CILO_CONFIG": file, "CILO_POOL": "10.9.0.0/16", "CILO_STATE_DIR": "/srv/cilo"}, "10.9.0.0/16", "abc", "dev.local", "/srv/cilo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(func(k string) string { return tt.env[k] }, yamlDecode)
			if err != nil {
				t.Fatal(err)
			}
			if c.Pool.String() != tt.pool || c.Prefix != tt.prefix || c.DNSSuffix != tt.suffix || c.StateDir != tt.state {
				t.Fatalf("got pool %s prefix %s suffix %s state %s", c.Pool, c.Prefix, c.DNSSuffix, c.StateDir)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		msg  string
	}{
		{"relative_state", func(c *Config) { c.StateDir = "state" }, "absolute"},
		{"pool_too_small", func(c *Config) { c.SetPool("10.0.0.0/25") }, "between a /8 and a /24"},
		{"ipv6_pool", func(c *Config) { c.SetPool("fd00::/48") }, "IPv4"},
		{"long_prefix", func(c *Config) { c.Prefix = "toolong" }, "1 to 5"},
		{"bad_prefix", func(c *Config) { c.Prefix = "a-b" }, "a-z and 0-9"},
		{"bad_suffix", func(c *Config) { c.DNSSuffix = "bad..suffix" }, "dns suffix"},
		{"bad_dns_addr", func(c *Config) { c.DNSAddr = "localhost" }, "host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Validate = %v, want mention of %q", err, tt.msg)
			}
		})
	}
	if _, err := Load(func(k string) string {
		return map[string]string{"CILO_CONFIG": "/nonexistent/cilo.yml"}[k]
	}, yamlDecode); err == nil {
		t.Fatal("a named config file that does not exist was accepted")
	}
}

// TestEnvironRoundTrip: a child cilo given Environ() sees the same config.
func TestEnvironRoundTrip(t *testing.T) {
	c := Default()
	c.StateDir, c.RunDir, c.Prefix, c.DNSSuffix = "/srv/s", "/srv/r", "xy", "dev.local"
	c.SetPool("10.40.0.0/14")
	env := map[string]string{"CILO_CONFIG": "/dev/null"}
	for _, kv := range c.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	got, err := Load(func(k string) string { return env[k] }, yamlDecode)
	if err != nil {
		t.Fatal(err)
	}
	if got != c {
		t.Fatalf("round trip: %+v, want %+v", got, c)
	}
}
