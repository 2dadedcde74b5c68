package main

import "github.com/spf13/cobra"

// workspaceCommands are the workspace area's commands.
func workspaceCommands(a *app) []*cobra.Command { return nil }
