package compose

import "github.com/distribution/reference"

// parseNormalizedNamed returns ref as containerd names images: with
// docker.io/library and :latest filled in.
func parseNormalizedNamed(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", err
	}
	return reference.TagNameOnly(named).String(), nil
}
