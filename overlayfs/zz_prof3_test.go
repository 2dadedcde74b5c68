package overlayfs

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestZZParts(t *testing.T) {
	src := os.Getenv("PROF_SRC")
	if src == "" {
		t.Skip("no PROF_SRC")
	}
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		t0 := time.Now()
		w, _ := walkTree(ctx, src, nil)
		t1 := time.Now()
		man := manifestFromWalk(w)
		k := man.key("x", src, nil)
		t2 := time.Now()
		writeManifest("/tmp/zzman", man)
		t3 := time.Now()
		m2, err := readManifest("/tmp/zzman")
		t4 := time.Now()
		ok := unchanged(ctx, src, m2)
		t5 := time.Now()
		t.Logf("walk %v man+key %v write %v read %v (%d, %v) unchanged %v (%v) %s", t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), t4.Sub(t3), len(m2), err, t5.Sub(t4), ok, k[:4])
	}
}
