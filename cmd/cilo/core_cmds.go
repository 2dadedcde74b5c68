package main

import "github.com/spf13/cobra"

// coreCommands are the core area's commands.
func coreCommands(a *app) []*cobra.Command { return nil }
