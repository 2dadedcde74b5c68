package dns

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// Config is what the DNS daemon and its helpers need from cilo's
// configuration. It holds plain values, not a sandbox config.Config, because
// sandbox imports this package (for [ResolvConf] and [Launcher]).
type Config struct {
	StateDir string // cilo's state directory (env records, log, init record)
	RunDir   string // runtime directory (pidfile and lock, status file)
	Addr     string // host listener, ip:port (127.0.0.1:5354)
	Suffix   string // zone suffix ("test")
	EnvPort  int    // port of the listener on each env gateway; 0 means 53

	// Upstreams, when set, replace the host's resolvers (ip:port each);
	// a daemon started by [Launcher] gets them as CILO_DNS_UPSTREAMS. Tests
	// and benchmarks point them at a loopback address of their own.
	Upstreams []string
}

func (c Config) envPort() int {
	if c.EnvPort == 0 {
		return 53
	}
	return c.EnvPort
}

// PIDFile is the daemon's pidfile; the daemon holds an exclusive flock on
// it for as long as it runs, which is what makes it a single instance.
func (c Config) PIDFile() string { return filepath.Join(c.RunDir, "dns.pid") }

// StatusFile is where the daemon publishes its zone and listener counts.
func (c Config) StatusFile() string { return filepath.Join(c.RunDir, "dns.status.json") }

// LogFile is the log of a daemon started in the background.
func (c Config) LogFile() string { return filepath.Join(c.StateDir, "logs", "dns.log") }

// initRecordFile records what `cilo init` changed, for --uninstall.
func (c Config) initRecordFile() string { return filepath.Join(c.StateDir, "dns-init.json") }

// environ is the daemon's configuration as the CILO_* variables a child
// `cilo dns serve` reads.
func (c Config) environ() []string {
	env := []string{
		"CILO_STATE_DIR=" + c.StateDir,
		"CILO_RUN_DIR=" + c.RunDir,
		"CILO_DNS_ADDR=" + c.Addr,
		"CILO_DNS_SUFFIX=" + c.Suffix,
	}
	if len(c.Upstreams) > 0 {
		env = append(env, UpstreamsEnv+"="+strings.Join(c.Upstreams, ","))
	}
	return env
}

// UpstreamsEnv names the variable `cilo dns serve` reads its upstreams
// from when no --upstream flag is given.
const UpstreamsEnv = "CILO_DNS_UPSTREAMS"

// ResolvConf is the content of env's private /etc/resolv.conf: cilo's
// server on the env's gateway, and the env's own domain as search domain
// so that bare service names (`db`) resolve as compose users expect. The
// server answers bare names too, for resolvers that skip the search list.
func ResolvConf(env *state.Env, suffix string) []byte {
	suffix = strings.Trim(strings.ToLower(suffix), ".")
	var b bytes.Buffer
	fmt.Fprintf(&b, "# cilo: env %s of project %s; names under .%s answered by cilo on the gateway\n", env.Name, env.Project, suffix)
	fmt.Fprintf(&b, "nameserver %s\n", env.Gateway)
	fmt.Fprintf(&b, "search %s.%s\n", strings.ToLower(env.Name), suffix)
	fmt.Fprintf(&b, "options ndots:1 timeout:2 attempts:2\n")
	return b.Bytes()
}
