package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cilo-dev/cilo/sandbox"
	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/enter"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// coreCommands are the lifecycle commands.
func coreCommands(a *app) []*cobra.Command {
	return []*cobra.Command{
		newRunCmd(a), newCreateCmd(a), newUpCmd(a), newDownCmd(a), newDestroyCmd(a),
		newListCmd(a), newStatusCmd(a), newPathCmd(a), newShellCmd(a), newDoctorCmd(a),
	}
}

func newRunCmd(a *app) *cobra.Command {
	var envFlag string
	var rm bool
	var cf composeFlags
	cmd := &cobra.Command{
		Use:   "run <command> <env> [args...] | run -e <env> [--rm] -- <command> [args...]",
		Short: "Run a command inside an env, creating and starting the env if needed",
		Long: `Run a command inside an env's network namespace, with the env's workspace as
its directory and CILO_* variables set. The env is created and its compose
services started first when needed, and keeps running afterwards (unless --rm).
Everything after <env> goes to the command verbatim, flags included.
With "cilo run -- <command>" and no env, the env is named after the git branch.
The command's exit status is cilo's exit status.`,
		Example: `  cilo run opencode agent-1 "implement login"
  cilo run -e agent-2 -- npm run dev
  cilo run --rm -e ci-42 -- go test ./...`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, p, err := a.managerAndProject(cmd)
			if err != nil {
				return err
			}
			if err := cf.apply(p); err != nil {
				return err
			}
			var name string
			var argv []string
			switch {
			case envFlag != "":
				name, argv = envFlag, args
			case cmd.ArgsLenAtDash() == 0:
				branch, err := p.Branch()
				if err != nil {
					return usageError{err}
				}
				if name, err = config.BranchEnvName(branch); err != nil {
					return usageError{err}
				}
				argv = args
			case len(args) < 2:
				return usageError{errors.New("cilo run needs a command and an env: cilo run <command> <env> [args...], or cilo run -e <env> -- <command>")}
			default:
				name, argv = args[1], append([]string{args[0]}, args[2:]...)
			}
			if err := config.ValidateEnvName(name); err != nil {
				return usageError{err}
			}
			return a.runInEnv(cmd, m, p, name, argv, rm)
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().StringVarP(&envFlag, "env", "e", "", "env to run in")
	cmd.Flags().BoolVar(&rm, "rm", false, "destroy the env when the command exits (for CI jobs)")
	cf.register(cmd)
	return cmd
}

// composeFlags are docker compose's -f and --profile, for up and run.
type composeFlags struct {
	files, profiles []string
}

func (c *composeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringArrayVarP(&c.files, "file", "f", nil, "compose file, relative to the project (repeatable; default: .cilo/config.yml compose_files, else compose.yaml and the like)")
	cmd.Flags().StringArrayVar(&c.profiles, "profile", nil, "compose profile to enable (repeatable; COMPOSE_PROFILES works too)")
}

// apply hands the flags on: files become the project's compose files,
// profiles the COMPOSE_PROFILES the compose engine reads.
func (c *composeFlags) apply(p *config.Project) error {
	if len(c.files) > 0 {
		if err := p.SetComposeFiles(c.files); err != nil {
			return usageError{err}
		}
	}
	if len(c.profiles) > 0 {
		os.Setenv("COMPOSE_PROFILES", strings.Join(c.profiles, ","))
	}
	return nil
}

func newCreateCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "create <env>...",
		Short: "Create envs: each its address, network namespace and workspace",
		Long: `Create envs of the current project. Several envs are made side by side, and
each is reported as soon as it is ready; a failed one leaves nothing behind
and does not stop the others.`,
		Example: `  cilo create agent-1
  cilo create agent-1 agent-2 agent-3`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, p, err := a.managerForEnv(cmd, args[0])
			if err != nil {
				return err
			}
			var failed []error
			err = m.CreateAll(cmd.Context(), p, args, func(name string, env *state.Env, err error) {
				if err != nil {
					failed = append(failed, err)
					return
				}
				fmt.Fprintf(a.stdout, "created %s (%s) at %s\n", env.Name, env.IP, env.Workspace)
			})
			if err != nil {
				return usageError{err}
			}
			return errors.Join(failed...)
		},
	}
}

func newUpCmd(a *app) *cobra.Command {
	var cf composeFlags
	cmd := &cobra.Command{
		Use:   "up <env>",
		Short: "Start an env and its compose services, creating it if needed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, p, err := a.managerForEnv(cmd, args[0])
			if err != nil {
				return err
			}
			if err := cf.apply(p); err != nil {
				return err
			}
			env, err := m.Up(cmd.Context(), p, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s is up at %s (%d services)\n", env.Name, env.IP, len(env.Services))
			return nil
		},
	}
	cf.register(cmd)
	return cmd
}

func newDownCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "down <env>",
		Short: "Stop what runs in an env (services and processes), keeping its workspace",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, project, name, err := a.envNameArg(args[0])
			if err != nil {
				return err
			}
			if _, err := m.Down(cmd.Context(), project, name); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s is down\n", name)
			return nil
		},
	}
}

func newDestroyCmd(a *app) *cobra.Command {
	var all, force bool
	cmd := &cobra.Command{
		Use:   "destroy <env>... | --all",
		Short: "Remove envs and everything they have (asks unless --force)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return usageError{errors.New("name the envs to destroy, or --all for every env of this project")}
			}
			m, err := a.manager()
			if err != nil {
				return err
			}
			type target struct{ project, name string }
			var targets []target
			if all {
				p, err := config.FindProject(".", a.decode)
				if err != nil {
					return err
				}
				envs, err := m.List(cmd.Context(), p.Name)
				if err != nil {
					return err
				}
				for _, e := range envs {
					targets = append(targets, target{e.Project, e.Name})
				}
			}
			for _, arg := range args {
				project, name, err := config.ParseEnvArg(".", arg, a.decode)
				if err != nil {
					return usageError{err}
				}
				if _, err := m.Get(cmd.Context(), project, name); err != nil {
					return err
				}
				targets = append(targets, target{project, name})
			}
			if len(targets) == 0 {
				fmt.Fprintln(a.stderr, "no envs to destroy")
				return nil
			}
			if !force {
				names := make([]string, len(targets))
				for i, t := range targets {
					names[i] = t.project + "/" + t.name
				}
				ok, err := a.confirm(fmt.Sprintf("destroy %s and their workspaces", strings.Join(names, ", ")))
				if err != nil || !ok {
					return err
				}
			}
			var errs []error
			for _, t := range targets {
				if err := m.Destroy(cmd.Context(), t.project, t.name); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(a.stdout, "destroyed %s\n", t.name)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "destroy every env of the current project")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask")
	return cmd
}

// confirm asks on the terminal; without one it refuses, so scripts must
// say --force.
func (a *app) confirm(question string) (bool, error) {
	if !isTerminal(os.Stdin) {
		return false, usageError{fmt.Errorf("refusing to %s without a terminal to ask: add --force", question)}
	}
	fmt.Fprintf(a.stderr, "%s? [y/N] ", question)
	line, _ := bufio.NewReader(a.stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	fmt.Fprintln(a.stderr, "nothing destroyed")
	return false, nil
}

func newListCmd(a *app) *cobra.Command {
	var all, asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the envs of this project (--all: of every project)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager()
			if err != nil {
				return err
			}
			project := ""
			if !all {
				p, err := config.FindProject(".", a.decode)
				if err != nil {
					return err
				}
				project = p.Name
			}
			envs, err := m.List(cmd.Context(), project)
			if err != nil {
				return err
			}
			if asJSON {
				return a.writeJSON(envViews(envs, a.cfg.DNSSuffix))
			}
			tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROJECT\tENV\tSTATUS\tIP\tSERVICES\tWORKSPACE")
			for _, e := range envs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", e.Project, e.Name, a.status(e.Status), e.IP, len(e.Services), e.Workspace)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "envs of every project")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output (stable fields)")
	return cmd
}

func newStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status <env>",
		Short: "Show an env: address, names, workspace mode, services",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := a.envFromArg(cmd, args[0])
			if err != nil {
				return err
			}
			v := envViews([]*state.Env{env}, a.cfg.DNSSuffix)[0]
			if asJSON {
				return a.writeJSON(v)
			}
			tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "env:\t%s\nproject:\t%s\nstatus:\t%s\nip:\t%s (gateway %s)\nurl:\t%s\nnetns:\t%s\nworkspace:\t%s (%s)\nsource:\t%s\n",
				v.Name, v.Project, a.status(env.Status), v.IP, v.Gateway, v.URL, v.Netns, v.Workspace, v.WorkspaceMode, v.Source)
			for _, s := range v.Services {
				fmt.Fprintf(tw, "service:\t%s %s %s\n", s.Name, s.Host, strings.Join(s.Addrs, ","))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output (stable fields)")
	return cmd
}

// envView is the stable JSON form of an env for list and status.
type envView struct {
	Project       string        `json:"project"`
	Name          string        `json:"name"`
	Status        string        `json:"status"`
	IP            string        `json:"ip"`
	Gateway       string        `json:"gateway"`
	Subnet        string        `json:"subnet"`
	URL           string        `json:"url"`
	Netns         string        `json:"netns"`
	Workspace     string        `json:"workspace"`
	WorkspaceMode string        `json:"workspace_mode"`
	Source        string        `json:"source"`
	Services      []serviceView `json:"services"`
	CreatedAt     string        `json:"created_at"`
}

type serviceView struct {
	Name  string   `json:"name"`
	Host  string   `json:"host"`
	Addrs []string `json:"addrs"`
}

func envViews(envs []*state.Env, suffix string) []envView {
	out := make([]envView, 0, len(envs))
	for _, e := range envs {
		v := envView{
			Project: e.Project, Name: e.Name, Status: string(e.Status),
			IP: e.IP.String(), Gateway: e.Gateway.String(), Subnet: e.Subnet.String(),
			URL:   "http://" + e.Project + "." + e.Name + "." + suffix,
			Netns: e.Netns, Workspace: e.Workspace, WorkspaceMode: e.WorkspaceMode, Source: e.Source,
			Services:  []serviceView{},
			CreatedAt: e.CreatedAt.Format("2006-01-02T15:04:05Z"),
		}
		for _, s := range e.Services {
			sv := serviceView{Name: s.Name, Host: s.Name + "." + e.Name + "." + suffix}
			for _, ad := range s.Addrs {
				sv.Addrs = append(sv.Addrs, ad.String())
			}
			v.Services = append(v.Services, sv)
		}
		out = append(out, v)
	}
	return out
}

func newPathCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "path <env>",
		Short: "Print an env's workspace directory",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := a.envFromArg(cmd, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, env.Workspace)
			return nil
		},
	}
}

func newShellCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "shell <env>",
		Short: "Open an interactive shell inside an env ($SHELL, else /bin/sh)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, p, err := a.managerForEnv(cmd, args[0])
			if err != nil {
				return err
			}
			shell := os.Getenv("SHELL")
			if shell == "" {
				shell = "/bin/sh"
			}
			return a.runInEnv(cmd, m, p, args[0], []string{shell}, false)
		},
	}
}

// runInEnv runs argv in env name with the caller's terminal, environment
// and working directory, as the sudo caller when there is one.
func (a *app) runInEnv(cmd *cobra.Command, m *sandbox.Manager, p *config.Project, name string, argv []string, rm bool) error {
	cred, err := enter.SudoCredential(os.Getenv)
	if err != nil {
		return err
	}
	wd, _ := os.Getwd()
	code, err := m.Run(cmd.Context(), p, name, enter.Request{
		Argv: argv, Dir: wd, Env: os.Environ(), User: cred, Rm: rm,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
	})
	return a.commandResult(code, err)
}

func newDoctorCmd(a *app) *cobra.Command {
	var fix, asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the host and cilo's objects; --fix finishes interrupted work, removes orphans and redoes lost base flushes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager()
			if err != nil {
				return err
			}
			findings, err := m.Doctor(cmd.Context(), fix)
			if err != nil {
				return err
			}
			if asJSON {
				return a.writeJSON(findings)
			}
			bad := 0
			for _, f := range findings {
				mark := "ok"
				switch {
				case f.Fixed:
					mark = "fixed"
				case !f.OK:
					mark = "PROBLEM"
					bad++
				}
				fmt.Fprintf(a.stdout, "%-8s %s: %s\n", mark, f.Check, f.Detail)
			}
			if bad > 0 {
				if !fix {
					fmt.Fprintln(a.stdout, "run cilo doctor --fix to repair")
				}
				return exitError{exitFailure}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&fix, "fix", false, "finish or undo interrupted operations and remove orphaned objects")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}

func (a *app) writeJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// status colours an env status on a terminal, unless NO_COLOR is set.
func (a *app) status(s state.Status) string {
	if !a.color || !isTerminal(os.Stdout) {
		return string(s)
	}
	switch s {
	case state.StatusRunning:
		return "\x1b[32m" + string(s) + "\x1b[0m"
	case state.StatusStopped:
		return "\x1b[33m" + string(s) + "\x1b[0m"
	}
	return "\x1b[31m" + string(s) + "\x1b[0m"
}

// envErr turns a bad env name into a usage error.
func (a *app) envErr(err error) error {
	if errors.Is(err, config.ErrInvalidName) {
		return usageError{err}
	}
	return err
}

// commandResult turns what a command run in an env returned into cilo's
// exit: the command's own status, or 126/127 (as a shell) when it could not
// be started.
func (a *app) commandResult(code int, err error) error {
	if err != nil && code != 0 {
		fmt.Fprintf(a.stderr, "cilo: %v\n", err)
		return exitError{code}
	}
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}
