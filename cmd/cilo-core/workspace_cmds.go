package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cilo-dev/cilo/overlayfs"
)

// workspaceCommands are the commands about an env's workspace.
func workspaceCommands(a *app) []*cobra.Command {
	return []*cobra.Command{newDiffCmd(a), newMergeCmd(a), newWorkspaceWatchCmd(a)}
}

// workspaceWatchCmd is the command of a source's watcher process, which
// workspaces start on their own (see overlayfs.WithWatcher).
const workspaceWatchCmd = "workspace-watch"

func newWorkspaceWatchCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:    workspaceWatchCmd,
		Short:  "Watch a workspace source for changes (started by cilo itself)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			logf := func(format string, args ...any) {
				fmt.Fprintf(a.stderr, time.Now().UTC().Format(time.RFC3339)+" "+format+"\n", args...)
			}
			return overlayfs.RunWatcher(ctx, logf)
		},
	}
}

func newDiffCmd(a *app) *cobra.Command {
	var patch, asJSON bool
	cmd := &cobra.Command{
		Use:   "diff <env>",
		Short: "Show what an env changed in its workspace (added, modified, deleted)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if patch && asJSON {
				return usageError{fmt.Errorf("--patch and --json exclude each other")}
			}
			m, project, name, err := a.envNameArg(args[0])
			if err != nil {
				return err
			}
			if patch {
				return m.Patch(cmd.Context(), project, name, a.stdout)
			}
			changes, err := m.Diff(cmd.Context(), project, name)
			if err != nil {
				return err
			}
			if asJSON {
				if changes == nil {
					return a.writeJSON([]any{})
				}
				return a.writeJSON(changes)
			}
			marks := map[string]string{"added": "A", "modified": "M", "deleted": "D"}
			for _, c := range changes {
				fmt.Fprintf(a.stdout, "%s %s\n", marks[c.Kind], c.Path)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&patch, "patch", "p", false, "unified diff of the changes")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output: [{path, kind}]")
	return cmd
}

func newMergeCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "merge <env>",
		Short: "Fetch an env's commits into the source repository as branch cilo/<env>",
		Long: `Fetch the commits made inside an env into the source repository as branch
cilo/<env>. The source's working tree, index and current branch are not touched:
merge or check out the branch yourself.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, project, name, err := a.envNameArg(args[0])
			if err != nil {
				return err
			}
			branch, err := m.Merge(cmd.Context(), project, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "env %s's commits are on branch %s of the source repository\n", name, branch)
			return nil
		},
	}
}
