package config

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrInvalidName is wrapped by every name that cannot be used.
var ErrInvalidName = errors.New("invalid name")

const maxLabel = 63

// ValidateEnvName checks that name can be an env name: a DNS label, since it
// becomes part of host names (api.<env>.test) and of paths.
func ValidateEnvName(name string) error {
	if err := validateLabel(name); err != nil {
		return fmt.Errorf("env name %q: %w: %s", name, ErrInvalidName, err.Error())
	}
	return nil
}

type labelError string

func (e labelError) Error() string { return string(e) }

func validateLabel(s string) error {
	const allowed = "use 1 to 63 characters a-z, 0-9 and '-', starting and ending with a letter or digit"
	switch {
	case s == "":
		return labelError("empty; " + allowed)
	case len(s) > maxLabel:
		return labelError(fmt.Sprintf("%d characters, at most %d allowed; %s", utf8.RuneCountInString(s), maxLabel, allowed))
	case s[0] == '-' || s[len(s)-1] == '-':
		return labelError("starts or ends with '-'; " + allowed)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return labelError(fmt.Sprintf("contains %q; %s", r, allowed))
		}
	}
	return nil
}

// NormalizeProject turns a project name from a directory basename or a
// config file into a DNS label: lowercased, runs of other characters
// replaced by '-', trimmed, at most 63 characters.
func NormalizeProject(raw string) (string, error) {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(raw) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	s := strings.TrimRight(b.String(), "-")
	if len(s) > maxLabel {
		s = strings.TrimRight(s[:maxLabel], "-")
	}
	if s == "" {
		return "", fmt.Errorf("project name %q: %w: it has no letters or digits; set `project:` in .cilo/config.yml", raw, ErrInvalidName)
	}
	return s, nil
}

// BranchEnvName turns a git branch into an env name the way silo does:
// "feature/Login_v2" becomes "feature-login-v2".
func BranchEnvName(branch string) (string, error) {
	name, err := NormalizeProject(branch)
	if err != nil {
		return "", fmt.Errorf("env name from branch %q: %w", branch, ErrInvalidName)
	}
	return name, nil
}

// ParseEnvArg splits an env named on the command line: "project/env" names
// any project's env, a bare name one of the project of dir. Both parts are
// validated.
func ParseEnvArg(dir, arg string, decode Decoder) (project, name string, err error) {
	if p, n, ok := strings.Cut(arg, "/"); ok {
		if err := ValidateEnvName(p); err != nil {
			return "", "", fmt.Errorf("project in %q: %w", arg, err)
		}
		if err := ValidateEnvName(n); err != nil {
			return "", "", err
		}
		return p, n, nil
	}
	if err := ValidateEnvName(arg); err != nil {
		return "", "", err
	}
	p, err := FindProject(dir, decode)
	if err != nil {
		return "", "", err
	}
	return p.Name, arg, nil
}
