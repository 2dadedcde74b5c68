package overlayfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestZZFurther(t *testing.T) {
	src := os.Getenv("PROF_SRC")
	if src == "" {
		t.Skip("no PROF_SRC")
	}
	ctx := context.Background()
	m := newTestManager(t)
	for i := 0; i < 6; i++ {
		if i >= 3 {
			f, _ := os.OpenFile(filepath.Join(src, "fmt/print.go"), os.O_APPEND|os.O_WRONLY, 0)
			fmt.Fprintf(f, "// %d\n", i)
			f.Close()
		}
		start := time.Now()
		if _, err := m.Create(ctx, fmt.Sprint("e", i), src, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Logf("create %d: %v", i, time.Since(start))
	}
}
