package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/overlayfs"
	"github.com/cilo-dev/cilo/sandbox"
)

// manager wires the lifecycle to its backends for the resolved config.
func (a *app) manager() (*sandbox.Manager, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(a.stderr, "cilo: "+format+"\n", args...) }
	ws, err := overlayfs.New(sandbox.WorkspaceRoot(a.cfg), overlayfs.WithProgress(a.stderr), overlayfs.WithLogf(logf))
	if err != nil {
		return nil, sandbox.PrivilegeHint(err)
	}
	return sandbox.New(a.cfg,
		sandbox.WithLogf(logf),
		sandbox.WithWorkspaces(ws),
	)
}

func (a *app) managerAndProject(cmd *cobra.Command) (*sandbox.Manager, *sandbox.Project, error) {
	m, err := a.manager()
	if err != nil {
		return nil, nil, err
	}
	p, err := sandbox.FindProject(".")
	if err != nil {
		return nil, nil, err
	}
	return m, p, nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
