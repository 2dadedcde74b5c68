package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ProjectConfig is .cilo/config.yml at the project root.
type ProjectConfig struct {
	Project   string `yaml:"project"`
	Workspace struct {
		Exclude []string `yaml:"exclude"`
	} `yaml:"workspace"`
	ComposeFiles []string `yaml:"compose_files"`
	EnvFiles     []string `yaml:"env_files"`
}

// Project is a source tree cilo makes environments of.
type Project struct {
	Name   string // DNS label
	Root   string // absolute path of the source tree
	Config ProjectConfig
}

// FindProject finds the project that dir belongs to: the nearest ancestor
// holding .cilo/config.yml or .git, else dir itself. The name comes from
// config's `project:`, else the root's basename.
func FindProject(dir string, decode Decoder) (*Project, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("find project of %s: %w", dir, err)
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return nil, fmt.Errorf("find project of %s: %w", dir, err)
	}
	root := abs
	for d := abs; ; d = filepath.Dir(d) {
		if exists(filepath.Join(d, ".cilo", "config.yml")) || exists(filepath.Join(d, ".git")) {
			root = d
			break
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	p := &Project{Root: root}
	cfgPath := filepath.Join(root, ".cilo", "config.yml")
	b, err := os.ReadFile(cfgPath)
	switch {
	case err == nil && len(b) == 0:
	case err == nil:
		if err := decode(cfgPath, b, &p.Config); err != nil {
			return nil, fmt.Errorf("read %s: %w", cfgPath, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("read %s: %w", cfgPath, err)
	}
	raw := p.Config.Project
	if raw == "" {
		raw = filepath.Base(root)
	}
	if p.Name, err = NormalizeProject(raw); err != nil {
		return nil, err
	}
	for _, f := range append(append([]string{}, p.Config.ComposeFiles...), p.Config.EnvFiles...) {
		if err := checkProjectPath(f); err != nil {
			return nil, fmt.Errorf("%s: %w", cfgPath, err)
		}
	}
	return p, nil
}

// SetComposeFiles replaces the compose files of this call (cilo up -f).
func (p *Project) SetComposeFiles(files []string) error {
	for _, f := range files {
		if err := checkProjectPath(f); err != nil {
			return fmt.Errorf("compose file: %w", err)
		}
	}
	p.Config.ComposeFiles = files
	return nil
}

// checkProjectPath refuses paths that leave the project: the env's copy
// of the project is all an env may read.
func checkProjectPath(f string) error {
	if f == "" || filepath.IsAbs(f) || f == ".." || strings.HasPrefix(filepath.Clean(f), "../") {
		return fmt.Errorf("%q must be a path inside the project", f)
	}
	return nil
}

// Branch is the current git branch of the project, read from .git without
// running git. A detached HEAD is an error: there is no name to use.
func (p *Project) Branch() (string, error) {
	gitDir := filepath.Join(p.Root, ".git")
	if b, err := os.ReadFile(gitDir); err == nil {
		// A worktree or submodule: ".git" is a file "gitdir: <path>".
		line := strings.TrimSpace(string(b))
		dir, ok := strings.CutPrefix(line, "gitdir: ")
		if !ok {
			return "", fmt.Errorf("read %s: not a gitdir file", gitDir)
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(p.Root, dir)
		}
		gitDir = dir
	}
	head, err := os.ReadFile(filepath.Join(gitDir, "HEAD"))
	if err != nil {
		return "", fmt.Errorf("%s is not a git repository, so no env name can be taken from its branch: name the env (cilo run -e NAME -- CMD)", p.Root)
	}
	ref, ok := strings.CutPrefix(strings.TrimSpace(string(head)), "ref: refs/heads/")
	if !ok {
		return "", fmt.Errorf("%s has a detached HEAD, so no env name can be taken from its branch: name the env (cilo run -e NAME -- CMD)", p.Root)
	}
	return ref, nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
