// Command cilo is the front of cilo's programs. A run in an env that is
// already up, `cilo run <command> <env> [args...]` or `cilo run -e <env> --
// <command> [args...]`, it does itself, in about 1.4 times what `ip netns
// exec` takes: it links only the config, the state records and system
// calls, and no YAML parser (config files are read as cilo-core decoded
// them, package parsed). Every other command, and every run that needs
// more (creating the env, starting its compose services, putting back
// what a reboot took, --rm, flags), it hands to cilo-core unchanged, which
// gives the same result the long way.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cilo-dev/cilo/compose/files"
	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/config/parsed"
	"github.com/cilo-dev/cilo/sandbox/enter"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// core is the program that implements every command.
const core = "cilo-core"

// The fast path enters the env from the main thread (see
// enter.Command.Exec).
func init() { runtime.LockOSThread() }

func main() {
	args := os.Args[1:]
	if name, argv, ok := parseRun(args); ok {
		runInEnvThatIsUp(context.Background(), name, argv)
	}
	handOver(args)
}

// parseRun recognizes the two forms of run that the fast path takes, with
// no flag but -e: everything after <env> (or after --) is the command's,
// verbatim. Anything else is cilo-core's to parse.
func parseRun(args []string) (env string, argv []string, ok bool) {
	if len(args) < 3 || args[0] != "run" {
		return "", nil, false
	}
	rest := args[1:]
	switch {
	case rest[0] == "-e" || rest[0] == "--env":
		if len(rest) < 4 || rest[2] != "--" {
			return "", nil, false
		}
		return rest[1], rest[3:], true
	case !strings.HasPrefix(rest[0], "-"):
		return rest[1], append([]string{rest[0]}, rest[2:]...), true
	}
	return "", nil, false
}

// runInEnvThatIsUp replaces cilo with argv inside env name of the current
// project when that env is up and has nothing for cilo-core to do: no
// compose services to start or check, nothing to restore, no operation in
// progress. It returns when it does not apply, or when something fails
// before the env is entered, so that cilo-core takes over and reports
// what is wrong.
func runInEnvThatIsUp(ctx context.Context, name string, argv []string) {
	if config.ValidateEnvName(name) != nil {
		return
	}
	// Config files are read as cilo-core last decoded them: a file it
	// has not decoded in this form is a miss, and cilo-core takes over.
	decode := parsed.New(config.ParsedDir(os.Getenv)).Decode
	cfg, err := config.Load(os.Getenv, decode)
	if err != nil || cfg.Validate() != nil {
		return
	}
	p, err := config.FindProject(".", decode)
	if err != nil || len(p.Config.ComposeFiles) > 0 {
		return
	}
	store, err := state.Open(cfg.StateDir)
	if err != nil {
		return
	}
	env, err := store.Get(ctx, state.Key(p.Name, name))
	if err != nil || env.Status != state.StatusRunning || env.Intent != nil || len(env.Services) > 0 {
		return
	}
	if files.Has(env, os.Environ()) || !enter.Ready(cfg, env) {
		return
	}
	user, err := enter.SudoCredential(os.Getenv)
	if err != nil {
		return
	}
	wd, _ := os.Getwd()
	c, err := enter.Prepare(cfg, env, p.Root, enter.Request{Argv: argv, Dir: wd, Env: os.Environ(), User: user})
	if err != nil {
		return
	}
	// From here the main thread may be inside the env: a failure is
	// reported here, as cilo-core reports it, not handed over.
	err = c.Exec()
	fmt.Fprintf(os.Stderr, "cilo: %v\n", err)
	os.Exit(126)
}

// handOver replaces cilo with cilo-core, same arguments, same environment.
func handOver(args []string) {
	exe, err := config.Program(core)
	if err == nil {
		err = unix.Exec(exe, append([]string{"cilo"}, args...), os.Environ())
	}
	fmt.Fprintf(os.Stderr, "cilo: %v\n", err)
	os.Exit(1)
}
