package compose

import (
	"slices"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"

	"github.com/cilo-dev/cilo/compose/files"
)

// TestFileNamesMatchComposeGo keeps the lean lookup's names equal to
// compose-go's, which it mirrors to stay free of compose-go.
func TestFileNamesMatchComposeGo(t *testing.T) {
	if !slices.Equal(files.DefaultNames, cli.DefaultFileNames) {
		t.Errorf("files.DefaultNames = %v, compose-go has %v", files.DefaultNames, cli.DefaultFileNames)
	}
	if !slices.Equal(files.OverrideNames, cli.DefaultOverrideFileNames) {
		t.Errorf("files.OverrideNames = %v, compose-go has %v", files.OverrideNames, cli.DefaultOverrideFileNames)
	}
}
