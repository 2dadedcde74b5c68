package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cilo-dev/cilo/dns"
	"github.com/cilo-dev/cilo/sandbox/config"
)

// dnsCommands are the dns area's commands.
func dnsCommands(a *app) []*cobra.Command {
	d := &cobra.Command{
		Use:   "dns",
		Short: "cilo's DNS server: env names under the suffix, everything else forwarded",
	}
	d.AddCommand(newDNSServeCmd(a), newDNSStatusCmd(a))
	return []*cobra.Command{d, newInitCmd(a)}
}

// dnsConfig is the dns package's view of cilo's config.
// CILO_DNS_UPSTREAMS, when set, reaches a daemon started on demand too.
func dnsConfig(c config.Config) dns.Config {
	cfg := dns.Config{StateDir: c.StateDir, RunDir: c.RunDir, Addr: c.DNSAddr, Suffix: c.DNSSuffix}
	if v := os.Getenv(dns.UpstreamsEnv); v != "" {
		cfg.Upstreams = strings.Split(v, ",")
	}
	return cfg
}

func newDNSServeCmd(a *app) *cobra.Command {
	var upstreams []string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the DNS server in the foreground (systemd runs this; cilo starts it on demand otherwise)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if len(upstreams) == 0 && os.Getenv(dns.UpstreamsEnv) != "" {
				upstreams = strings.Split(os.Getenv(dns.UpstreamsEnv), ",")
			}
			logf := func(format string, args ...any) {
				fmt.Fprintf(a.stderr, time.Now().UTC().Format(time.RFC3339)+" "+format+"\n", args...)
			}
			return dns.Serve(ctx, dnsConfig(a.cfg), dns.ServeOptions{Upstreams: upstreams, Logf: logf})
		},
	}
	cmd.Flags().StringSliceVar(&upstreams, "upstream", nil, "upstream resolver ip:port, repeatable (env CILO_DNS_UPSTREAMS, comma separated; default: the host's, from /etc/resolv.conf)")
	return cmd
}

func newDNSStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether the DNS server runs and answers, and what it serves",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := dns.GetStatus(cmd.Context(), dnsConfig(a.cfg))
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
			} else {
				printDNSStatus(a, st)
			}
			if !st.Healthy {
				return exitError{code: exitFailure}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

func printDNSStatus(a *app, st *dns.Status) {
	w := a.stdout
	state := "not running"
	if st.Running {
		state = fmt.Sprintf("running (pid %d)", st.PID)
	}
	health := "not answering: " + st.Error
	if st.Healthy {
		health = fmt.Sprintf("answering in %.2f ms", st.LatencyMS)
	}
	fmt.Fprintf(w, "server:    %s, %s\n", state, health)
	listen := st.Listen
	if len(listen) == 0 {
		listen = []string{st.Addr}
	}
	fmt.Fprintf(w, "listen:    %s\n", strings.Join(listen, ", "))
	fmt.Fprintf(w, "zone:      .%s, %d envs, %d names, %d records (serial %d, updated %s)\n",
		strings.Trim(st.Suffix, "."), st.Envs, st.Names, st.Records, st.Serial, st.Updated.Format(time.RFC3339))
	fmt.Fprintf(w, "envs:      %d gateway listeners\n", len(st.EnvListen))
	if len(st.Contested) > 0 {
		fmt.Fprintf(w, "contested: %d short names claimed by several envs (the first created answers; use <name>.<env>.<project>.%s): %s\n",
			len(st.Contested), strings.Trim(st.Suffix, "."), strings.Join(st.Contested, " "))
	}
	fmt.Fprintf(w, "upstreams: %s\n", strings.Join(st.Upstreams, ", "))
	fmt.Fprintf(w, "host:      %s\n", st.Resolver)
	fmt.Fprintf(w, "systemd:   %v\n", st.Systemd)
	fmt.Fprintf(w, "log:       %s\n", st.LogFile)
}

func newInitCmd(a *app) *cobra.Command {
	var uninstall, force bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install cilo's DNS server and make the host resolve env names through it",
		Long: `Install cilo's DNS server as a systemd service (where systemd runs; elsewhere
cilo starts it in the background when needed) and make the host send names
under the DNS suffix to it: a systemd-resolved drop-in where systemd-resolved
runs; elsewhere cilo explains the manual step, or with --force rewrites
/etc/resolv.conf (keeping the previous file). --uninstall undoes all of it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the cilo binary: %w", err)
			}
			o := dns.InitOptions{Exe: exe, Force: force, Out: a.stdout}
			if uninstall {
				return dns.Uninstall(cmd.Context(), dnsConfig(a.cfg), o)
			}
			return dns.Init(cmd.Context(), dnsConfig(a.cfg), o)
		},
	}
	cmd.Flags().BoolVar(&uninstall, "uninstall", false, "undo everything cilo init did")
	cmd.Flags().BoolVar(&force, "force", false, "without systemd-resolved, rewrite /etc/resolv.conf to ask cilo first (backup kept)")
	return cmd
}
