package compose

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	yaml "go.yaml.in/yaml/v4"

	"github.com/cilo-dev/cilo/compose/files"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// ErrNoComposeFile is returned by [Load] when the workspace has none.
var ErrNoComposeFile = errors.New("no compose file")

// supportedService are the service keys cilo carries out. Any other key
// set on a service is reported by [Warnings], never silently dropped.
var supportedService = map[string]bool{
	"build": true, "command": true, "depends_on": true, "deploy": true, "entrypoint": true,
	"environment": true, "env_file": true, "expose": true, "extra_hosts": true, "healthcheck": true,
	"hostname": true, "image": true, "labels": true, "networks": true, "ports": true,
	"profiles": true, "pull_policy": true, "read_only": true, "restart": true, "scale": true,
	"stop_grace_period": true, "stop_signal": true, "tmpfs": true, "user": true,
	"volumes": true, "working_dir": true, "mem_limit": true, "cpus": true, "pids_limit": true,
	// A terminal keeps shells alive; stdin is never attached (as in
	// `docker compose up -d`), so stdin_open changes nothing.
	"tty": true, "stdin_open": true,
}

// supportedDeploy are the deploy keys cilo carries out.
var supportedDeploy = map[string]bool{"replicas": true, "resources": true, "restart_policy": true}

// Load reads the compose project of env from its workspace: the files named
// in env.ComposeFiles (from .cilo/config.yml), else COMPOSE_FILE, else
// docker compose's default names in the workspace root; env.EnvFiles or
// .env for interpolation; COMPOSE_PROFILES and COMPOSE_PROJECT_NAME from
// the environment. The project name is the file's `name:`, else
// COMPOSE_PROJECT_NAME, else the cilo project's name, so every env of a
// project shares image names. It returns [ErrNoComposeFile] when there is
// no compose file.
func Load(ctx context.Context, env *state.Env, osEnv []string) (*types.Project, error) {
	paths, err := files.Find(env, osEnv)
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, ErrNoComposeFile
	}
	opts := []cli.ProjectOptionsFn{
		cli.WithWorkingDirectory(env.Workspace),
		cli.WithEnv(osEnv),
		cli.WithResolvedPaths(true),
	}
	var envFiles []string
	for _, f := range env.EnvFiles {
		envFiles = append(envFiles, files.Abs(env.Workspace, f))
	}
	if len(envFiles) > 0 {
		opts = append(opts, cli.WithEnvFiles(envFiles...))
	} else if _, err := os.Stat(filepath.Join(env.Workspace, ".env")); err == nil {
		opts = append(opts, cli.WithEnvFiles(filepath.Join(env.Workspace, ".env")))
	}
	named, err := namedInFiles(paths)
	if err != nil {
		return nil, err
	}
	opts = append(opts, cli.WithDotEnv, func(o *cli.ProjectOptions) error {
		// Without a name in the file, COMPOSE_PROJECT_NAME (environment
		// or .env) wins, else the cilo project: never the workspace
		// directory's name, which differs per env.
		if _, set := o.Environment["COMPOSE_PROJECT_NAME"]; !set && !named {
			o.Environment["COMPOSE_PROJECT_NAME"] = loader.NormalizeProjectName(env.Project)
		}
		return nil
	}, cli.WithDefaultProfiles())
	po, err := cli.NewProjectOptions(paths, opts...)
	if err != nil {
		return nil, fmt.Errorf("load compose project of env %q: %w", env.Name, err)
	}
	p, err := po.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("load compose project of env %q: %w", env.Name, err)
	}
	return p, nil
}

// HasComposeFile reports whether env has a compose file, without parsing
// it (cheap: cilo run in an env without one must not pay for containerd).
func HasComposeFile(env *state.Env, osEnv []string) bool { return files.Has(env, osEnv) }

// namedInFiles reports whether one of the files sets the top-level name,
// and refuses a file that is not YAML with its name and line.
func namedInFiles(files []string) (named bool, err error) {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read compose file %s: %w", f, err)
		}
		var top struct {
			Name string `yaml:"name"`
		}
		if err := yaml.Unmarshal(b, &top); err != nil {
			// The YAML parser names the line; the file is ours to name.
			return false, fmt.Errorf("invalid compose file %s: %w", f, err)
		}
		if top.Name != "" {
			named = true
		}
	}
	return named, nil
}

// Warnings lists every field of p that cilo does not carry out yet, naming
// the field and the service.
func Warnings(p *types.Project) []string {
	var out []string
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		b, err := json.Marshal(s)
		if err != nil {
			out = append(out, fmt.Sprintf("service %q: cannot inspect its fields: %v", name, err))
			continue
		}
		var fields map[string]json.RawMessage
		json.Unmarshal(b, &fields)
		for k := range fields {
			if !supportedService[k] {
				out = append(out, fmt.Sprintf("service %q: %q is not supported by cilo yet and is ignored", name, k))
			}
		}
		if s.Deploy != nil {
			var deploy map[string]json.RawMessage
			db, _ := json.Marshal(s.Deploy)
			json.Unmarshal(db, &deploy)
			for k := range deploy {
				if !supportedDeploy[k] {
					out = append(out, fmt.Sprintf("service %q: \"deploy.%s\" is not supported by cilo yet and is ignored", name, k))
				}
			}
			if r := s.Deploy.Resources.Reservations; r != nil {
				out = append(out, fmt.Sprintf("service %q: \"deploy.resources.reservations\" is not supported by cilo yet and is ignored", name))
			}
			if l := s.Deploy.Resources.Limits; l != nil && (len(l.Devices) > 0 || len(l.GenericResources) > 0) {
				out = append(out, fmt.Sprintf("service %q: \"deploy.resources.limits\" devices are not supported by cilo yet and are ignored", name))
			}
			if r := s.Deploy.RestartPolicy; r != nil && (r.Delay != nil || r.Window != nil) {
				out = append(out, fmt.Sprintf("service %q: \"deploy.restart_policy\" delay and window are ignored: cilo backs off from 100 ms, doubling", name))
			}
		}
		for net := range s.Networks {
			if net != "default" {
				out = append(out, fmt.Sprintf("service %q: network %q: cilo puts every service on the env's one network", name, net))
			}
		}
		for _, v := range s.Volumes {
			switch v.Type {
			case types.VolumeTypeBind, types.VolumeTypeVolume, types.VolumeTypeTmpfs:
			default:
				out = append(out, fmt.Sprintf("service %q: volume type %q at %s is not supported by cilo yet and is ignored", name, v.Type, v.Target))
			}
		}
	}
	for _, k := range []struct {
		field string
		n     int
	}{{"secrets", len(p.Secrets)}, {"configs", len(p.Configs)}, {"models", len(p.Models)}} {
		if k.n > 0 {
			out = append(out, fmt.Sprintf("top-level %q is not supported by cilo yet and is ignored", k.field))
		}
	}
	for n := range p.Networks {
		if n != "default" {
			out = append(out, fmt.Sprintf("top-level network %q: cilo puts every service on the env's one network", n))
		}
	}
	sort.Strings(out)
	return out
}
