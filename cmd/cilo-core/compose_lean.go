//go:build !cilo_compose

package main

import (
	"os"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cilo-dev/cilo/compose/bridge"
	"github.com/cilo-dev/cilo/sandbox"
	"github.com/cilo-dev/cilo/sandbox/config"
)

// The cilo binary leaves compose work to cilo-compose (see package
// bridge): its lifecycle calls go through the bridge, and its compose
// commands hand the whole command line over.

func composeServices(a *app, _ func(string, ...any)) sandbox.Services {
	return bridge.New(a.cfg.Environ(), a.stderr)
}

// newServicesCmd exists only in cilo-compose.
func newServicesCmd(*app) *cobra.Command { return nil }

// composeCommands are forwarded as they were typed, flags and all.
func composeCommands(a *app) []*cobra.Command {
	forward := func(use, short string) *cobra.Command {
		return &cobra.Command{
			Use:                use,
			Short:              short,
			DisableFlagParsing: true,
			RunE: func(cmd *cobra.Command, args []string) error {
				exe, err := config.Program(bridge.Binary)
				if err != nil {
					return err
				}
				argv := append([]string{exe}, os.Args[1:]...)
				return syscall.Exec(exe, argv, append(os.Environ(), a.cfg.Environ()...))
			},
		}
	}
	return []*cobra.Command{
		forward("logs <env> [service] [-f] [--tail N]", "Print the logs of an env's compose services"),
		forward("exec <env> <service> [cmd...]", "Run a command in a running compose service of an env (a shell by default)"),
		forward("ps <env> [--json]", "List the compose containers of an env"),
		forward("image load <archive>", "Load a docker save or OCI image archive into cilo's containerd namespace"),
	}
}
