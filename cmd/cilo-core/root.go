package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/config/parsed"
)

// app is what every command shares: the resolved configuration and the
// streams, so tests can swap them.
type app struct {
	cfg    config.Config
	decode config.Decoder // reads config files as YAML, keeping results for the front
	stdout io.Writer
	stderr io.Writer
	stdin  io.Reader
	color  bool
}

// exitError carries a command's exit status out of cobra without printing
// anything more (cilo run returns the command's status this way).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func run(ctx context.Context, args []string) int {
	a := &app{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin, color: os.Getenv("NO_COLOR") == ""}
	a.decode = yamlDecoder(parsed.New(config.ParsedDir(os.Getenv)))
	root := newRootCmd(a)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(a.stderr, "cilo: %v\n", err)
	return exitCode(err)
}

func newRootCmd(a *app) *cobra.Command {
	var flags struct {
		stateDir, runDir, pool, prefix, suffix, dnsAddr, containerd, ctrdNS string
	}
	root := &cobra.Command{
		Use:   "cilo",
		Short: "Run many isolated environments of one project side by side",
		Long: `cilo gives each environment of a project its own network namespace, its own
copy-on-write workspace, its own compose services and stable DNS names, so that
several agents, test suites or CI jobs can work on one repository at once.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(os.Getenv, a.decode)
			if err != nil {
				return usageError{err}
			}
			f := cmd.Flags()
			set := func(name string, dst *string, v string) {
				if f.Changed(name) {
					*dst = v
				}
			}
			set("state-dir", &cfg.StateDir, flags.stateDir)
			set("run-dir", &cfg.RunDir, flags.runDir)
			set("prefix", &cfg.Prefix, flags.prefix)
			set("dns-suffix", &cfg.DNSSuffix, flags.suffix)
			set("dns-addr", &cfg.DNSAddr, flags.dnsAddr)
			set("containerd-address", &cfg.ContainerdAddress, flags.containerd)
			set("containerd-namespace", &cfg.ContainerdNamespace, flags.ctrdNS)
			if f.Changed("pool") {
				if err := cfg.SetPool(flags.pool); err != nil {
					return usageError{err}
				}
			}
			if err := cfg.Validate(); err != nil {
				return usageError{err}
			}
			a.cfg = cfg
			return nil
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&flags.stateDir, "state-dir", "", "state directory (env CILO_STATE_DIR, default /var/lib/cilo)")
	pf.StringVar(&flags.runDir, "run-dir", "", "runtime directory (env CILO_RUN_DIR, default /run/cilo)")
	pf.StringVar(&flags.pool, "pool", "", "address pool, one /24 per env (env CILO_POOL, default 10.224.0.0/16)")
	pf.StringVar(&flags.prefix, "prefix", "", "prefix of interface, namespace and nftables names (env CILO_PREFIX, default cilo)")
	pf.StringVar(&flags.suffix, "dns-suffix", "", "DNS suffix of env names (env CILO_DNS_SUFFIX, default test)")
	pf.StringVar(&flags.dnsAddr, "dns-addr", "", "host address of the DNS server (env CILO_DNS_ADDR, default 127.0.0.1:5354)")
	pf.StringVar(&flags.containerd, "containerd-address", "", "containerd socket (env CONTAINERD_ADDRESS, default /run/containerd/containerd.sock)")
	pf.StringVar(&flags.ctrdNS, "containerd-namespace", "", "containerd namespace (env CILO_CONTAINERD_NAMESPACE, default cilo)")

	root.AddCommand(coreCommands(a)...)
	root.AddCommand(workspaceCommands(a)...)
	root.AddCommand(dnsCommands(a)...)
	root.AddCommand(composeCommands(a)...)
	if c := newServicesCmd(a); c != nil {
		root.AddCommand(c)
	}
	return root
}

// usageError marks errors in what the user typed (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }
