package main

import "github.com/spf13/cobra"

// composeCommands are the compose area's commands.
func composeCommands(a *app) []*cobra.Command { return nil }
