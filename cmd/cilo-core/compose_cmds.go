//go:build cilo_compose

package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cilo-dev/cilo/compose"
	"github.com/cilo-dev/cilo/compose/supervise"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// envEngine resolves the env named by arg and opens the compose engine
// for it; the caller closes the engine.
func (a *app) envEngine(cmd *cobra.Command, arg string) (*state.Env, *compose.Engine, error) {
	env, err := a.envFromArg(cmd, arg)
	if err != nil {
		return nil, nil, err
	}
	return env, a.composeEngine(), nil
}

// composeEngine is the compose backend for the resolved config; it
// connects to containerd only when used. Its restart supervisor is this
// program, started in the background with the same config.
func (a *app) composeEngine() *compose.Engine {
	return compose.New(compose.Options{
		Address:   a.cfg.ContainerdAddress,
		Namespace: a.cfg.ContainerdNamespace,
		Prefix:    a.cfg.Prefix,
		Pool:      a.cfg.Pool,
		StateDir:  a.cfg.StateDir,
		RunDir:    a.cfg.RunDir,
		DNSSuffix: a.cfg.DNSSuffix,
		Logf:      func(format string, args ...any) { fmt.Fprintf(a.stderr, "cilo: "+format+"\n", args...) },
		Progress:  a.stderr,
		Supervisor: &supervise.Launcher{
			RunDir:  a.cfg.RunDir,
			LogFile: filepath.Join(a.cfg.StateDir, "logs", "supervise.log"),
			Env:     a.cfg.Environ(),
		},
	})
}

// composeCommands are the compose area's commands.
func composeCommands(a *app) []*cobra.Command {
	return []*cobra.Command{logsCmd(a), execCmd(a), psCmd(a), imageCmd(a), composeLogCmd(), superviseCmd(a)}
}

// superviseCmd is the restart supervisor, which cilo up starts in the
// background (see package supervise); users never call it.
func superviseCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:    supervise.Command,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			e := a.composeEngine()
			defer e.Close()
			return supervise.Run(ctx, supervise.Options{
				Address:   a.cfg.ContainerdAddress,
				Namespace: a.cfg.ContainerdNamespace,
				RunDir:    a.cfg.RunDir,
				Restarter: e,
				Logf: func(format string, args ...any) {
					fmt.Fprintf(a.stderr, time.Now().UTC().Format(time.RFC3339)+" "+format+"\n", args...)
				},
			})
		},
	}
}

// composeLogCmd is the logging binary containerd runs for services with a
// terminal (see compose.LoggerCommand); users never call it.
func composeLogCmd() *cobra.Command {
	return &cobra.Command{
		Use:    compose.LoggerCommand + " <file>",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return compose.RunLogger(args[0])
		},
	}
}

func logsCmd(a *app) *cobra.Command {
	var o compose.LogsOptions
	cmd := &cobra.Command{
		Use:   "logs <env> [service]",
		Short: "Print the logs of an env's compose services",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, e, err := a.envEngine(cmd, args[0])
			if err != nil {
				return err
			}
			defer e.Close()
			if len(args) == 2 {
				o.Service = args[1]
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return e.Logs(ctx, env, o, a.stdout)
		},
	}
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().IntVar(&o.Tail, "tail", -1, "only the last N lines of each service (-1: all)")
	return cmd
}

func execCmd(a *app) *cobra.Command {
	var noTTY bool
	var index int
	cmd := &cobra.Command{
		Use:   "exec <env> <service> [cmd...]",
		Short: "Run a command in a running compose service of an env (a shell by default)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, e, err := a.envEngine(cmd, args[0])
			if err != nil {
				return err
			}
			defer e.Close()
			code, err := e.Exec(cmd.Context(), env, compose.ExecOptions{
				Service: args[1], Replica: index, Args: args[2:], TTY: !noTTY && isTerminal(os.Stdin) && isTerminal(os.Stdout),
				Stdin: a.stdin, Stdout: a.stdout, Stderr: a.stderr,
			})
			return a.commandResult(code, err)
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVarP(&noTTY, "no-tty", "T", false, "do not allocate a terminal")
	cmd.Flags().IntVar(&index, "index", 1, "which replica of the service")
	return cmd
}

func psCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps <env>",
		Short: "List the compose containers of an env",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, e, err := a.envEngine(cmd, args[0])
			if err != nil {
				return err
			}
			defer e.Close()
			cs, err := e.Ps(cmd.Context(), env)
			if err != nil {
				return err
			}
			if asJSON {
				return a.writeJSON(cs)
			}
			tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSERVICE\tSTATUS\tADDRESS\tPORTS\tIMAGE")
			for _, c := range cs {
				status := c.Status
				if c.ExitCode != nil {
					status = fmt.Sprintf("%s (%d)", status, *c.ExitCode)
				}
				if c.Health != "" {
					status = fmt.Sprintf("%s (%s)", status, c.Health)
				}
				var ports []string
				for _, p := range c.Ports {
					ports = append(ports, fmt.Sprintf("localhost:%d->%d/%s", p.Published, p.Target, p.Protocol))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Service, status, c.Addr, strings.Join(ports, ","), c.Image)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}

func imageCmd(a *app) *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Manage the images of compose services"}
	img.AddCommand(&cobra.Command{
		Use:   "load <archive>",
		Short: "Load a docker save or OCI image archive into cilo's containerd namespace",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e := a.composeEngine()
			defer e.Close()
			names, err := e.LoadImage(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			for _, n := range names {
				fmt.Fprintf(a.stdout, "loaded %s\n", n)
			}
			return nil
		},
	})
	return img
}
