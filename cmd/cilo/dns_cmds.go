package main

import "github.com/spf13/cobra"

// dnsCommands are the dns area's commands.
func dnsCommands(a *app) []*cobra.Command { return nil }
