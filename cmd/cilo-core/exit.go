package main

import (
	"errors"
)

// Exit codes, documented in docs/cli.md.
const (
	exitFailure = 1 // the operation failed
	exitUsage   = 2 // bad flags, names or config
)

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}
