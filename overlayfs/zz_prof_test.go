package overlayfs

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestZZProf(t *testing.T) {
	src := os.Getenv("PROF_SRC")
	if src == "" {
		t.Skip("no PROF_SRC")
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		dst := os.Getenv("PROF_DST")
		os.RemoveAll(dst)
		start := time.Now()
		w, err := walkTree(ctx, src, nil)
		if err != nil {
			t.Fatal(err)
		}
		t1 := time.Since(start)
		os.Mkdir(dst, 0o755)
		c := newCopier(src, dst, os.Getenv("PROF_NOCLONE") == "")
		start = time.Now()
		if err := c.copyTree(ctx, w, nil); err != nil {
			t.Fatal(err)
		}
		t.Logf("walk %v (%d entries) copy %v reflinked=%v", t1, len(w.entries), time.Since(start), c.reflinked())
	}
}
