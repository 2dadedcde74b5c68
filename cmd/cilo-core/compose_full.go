//go:build cilo_compose

package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cilo-dev/cilo/compose/bridge"
	"github.com/cilo-dev/cilo/sandbox"
)

// This build (cilo-compose, `-tags cilo_compose`) carries the compose
// engine: it runs services in-process and serves the cilo binary's bridge.

func composeServices(a *app, _ func(string, ...any)) sandbox.Services { return a.composeEngine() }

// newServicesCmd is the server side of package bridge: the env comes as
// JSON on stdin, the result goes as JSON to stdout, progress to stderr.
func newServicesCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:    bridge.Command + " up|down|remove",
		Short:  "Run compose work for the cilo binary (internal)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req bridge.Request
			if err := json.NewDecoder(a.stdin).Decode(&req); err != nil || req.Env == nil {
				return usageError{fmt.Errorf("%s: read env from stdin: %v", bridge.Command, err)}
			}
			e := a.composeEngine()
			defer e.Close()
			var resp bridge.Response
			var err error
			switch args[0] {
			case "up":
				resp.Services, err = e.Up(cmd.Context(), req.Env)
			case "down":
				err = e.Down(cmd.Context(), req.Env)
			case "remove":
				err = e.Remove(cmd.Context(), req.Env)
			default:
				return usageError{fmt.Errorf("%s: unknown operation %q", bridge.Command, args[0])}
			}
			if err != nil {
				resp.Error = err.Error()
			}
			if jerr := json.NewEncoder(a.stdout).Encode(resp); jerr != nil {
				return jerr
			}
			if err != nil {
				return exitError{exitFailure}
			}
			return nil
		},
	}
}
