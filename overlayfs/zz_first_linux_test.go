package overlayfs

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

func TestZZFirst(t *testing.T) {
	src := os.Getenv("PROF_SRC")
	if src == "" {
		t.Skip("no PROF_SRC")
	}
	ctx := context.Background()
	m, err := New(os.Getenv("PROF_ROOT"), WithLogf(t.Logf))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		start := time.Now()
		id := fmt.Sprint("f", i)
		if _, err := m.Create(ctx, id, src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Logf("create %v", time.Since(start))
		s := time.Now()
		syncFS(src)
		t.Logf("extra syncfs %v", time.Since(s))
		m.Remove(ctx, id)
	}
}
