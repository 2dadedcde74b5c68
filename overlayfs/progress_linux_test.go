package overlayfs

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	tests := []struct {
		name    string
		elapsed time.Duration
		want    string // "" for no output at all
	}{
		{"quick_copy_prints_nothing", 10 * time.Millisecond, ""},
		{"long_copy_shows_counts", 3 * time.Second, "snapshot src: 5/10 files, 1/2 MB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			start := time.Now().Add(-tt.elapsed)
			p := &progress{w: &buf, what: "snapshot src", files: 10, bytes: 2 << 20, start: start, last: start}
			c := &copier{}
			c.doneFiles.Store(5)
			c.doneBytes.Store(1 << 20)
			p.tick(c)
			p.finish(c)
			got := buf.String()
			if tt.want == "" && got != "" {
				t.Errorf("printed %q for a quick copy", got)
			}
			if tt.want != "" && (!strings.Contains(got, tt.want) || !strings.HasSuffix(got, "\n")) {
				t.Errorf("printed %q, want it to contain %q and end the line", got, tt.want)
			}
		})
	}
	// Not a terminal: no progress object at all.
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if p := newProgress(f, "x", &walkResult{}); p != nil {
		t.Error("progress shown on a plain file")
	}
}
