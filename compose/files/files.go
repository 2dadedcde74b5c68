// Package files finds an env's compose files without loading them. It is
// kept apart from package compose, and free of its dependencies, because
// the cilo binary asks it on every `cilo run` and must not pay for
// containerd's and compose-go's package initialisation to learn that an
// env has no compose file.
package files

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilo-dev/cilo/sandbox/state"
)

// DefaultNames are docker compose's file names, in order of preference
// (compose-go's cli.DefaultFileNames; a test in package compose keeps them
// equal).
var DefaultNames = []string{"compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"}

// OverrideNames are the override files read after the default one
// (compose-go's cli.DefaultOverrideFileNames).
var OverrideNames = []string{"compose.override.yml", "compose.override.yaml", "docker-compose.override.yml", "docker-compose.override.yaml"}

// Find picks the compose files of env, absolute: env.ComposeFiles (from
// .cilo/config.yml), else COMPOSE_FILE from osEnv, else the first default
// name in the workspace root plus its override. Named files that do not
// exist are an error; no default file is (nil, nil).
func Find(env *state.Env, osEnv []string) ([]string, error) {
	var files []string
	switch {
	case len(env.ComposeFiles) > 0:
		for _, f := range env.ComposeFiles {
			files = append(files, Abs(env.Workspace, f))
		}
	case Lookup(osEnv, "COMPOSE_FILE") != "":
		sep := Lookup(osEnv, "COMPOSE_PATH_SEPARATOR")
		if sep == "" {
			sep = string(os.PathListSeparator)
		}
		for _, f := range strings.Split(Lookup(osEnv, "COMPOSE_FILE"), sep) {
			files = append(files, Abs(env.Workspace, f))
		}
	default:
		if f := firstExisting(env.Workspace, DefaultNames); f != "" {
			files = append(files, f)
			if o := firstExisting(env.Workspace, OverrideNames); o != "" {
				files = append(files, o)
			}
		}
		return files, nil
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("compose file of env %q: %w", env.Name, err)
		}
	}
	return files, nil
}

// Has reports whether env has a compose file (or names one that is
// missing, which loading then reports).
func Has(env *state.Env, osEnv []string) bool {
	files, err := Find(env, osEnv)
	return err != nil || len(files) > 0
}

func firstExisting(dir string, names []string) string {
	for _, n := range names {
		p := filepath.Join(dir, n)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// Abs resolves p against dir unless it is absolute.
func Abs(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// Lookup returns the last value of key in env (KEY=value entries).
func Lookup(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}
