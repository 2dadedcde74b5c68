package compose

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	testimages "github.com/cilo-dev/cilo/test/images"
)

// TestExampleProject runs the bundled example (examples/counter) in two
// envs from images built from its Go sources and loaded under the names
// docker compose gives its build: services (counter-<service>), and checks
// that each env counts on its own.
func TestExampleProject(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	src := filepath.Join("..", "examples", "counter")
	dir := t.TempDir()
	for _, s := range []string{"kv", "migrate", "api", "web"} {
		bin := filepath.Join(dir, s)
		if err := testimages.BuildGo(ctx, src, "./"+s, bin); err != nil {
			t.Fatal(err)
		}
		archive := filepath.Join(dir, s+".tar")
		spec := testimages.Spec{Ref: "counter-" + s, Files: []testimages.File{{Path: "/" + s, Source: bin, Mode: 0o755}}, Entrypoint: []string{"/" + s}}
		if err := testimages.WriteArchiveFile(archive, spec); err != nil {
			t.Fatal(err)
		}
		if _, err := h.engine.LoadImage(ctx, archive); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{}
	filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(src, p)
			b, _ := os.ReadFile(p)
			files[rel] = string(b)
		}
		return nil
	})
	a := h.newEnv(0, "ex1", files)
	b := h.newEnv(1, "ex2", files)
	for i, e := range [...]struct {
		name   string
		visits int
	}{{"ex1", 1}, {"ex2", 3}} {
		env := a
		if i == 1 {
			env = b
		}
		svcs, err := h.engine.Up(ctx, env)
		if err != nil {
			t.Fatalf("up %s: %v\n%s", e.name, err, h.logs)
		}
		ingress := ""
		for _, s := range svcs {
			if s.Ingress {
				ingress = s.Name
			}
		}
		if ingress != "web" {
			t.Errorf("ingress service = %q, want web (cilo.ingress label)", ingress)
		}
		var last string
		for v := 0; v < e.visits; v++ {
			last, err = eventually(env.Netns, tcp4("127.0.0.1:8080"), "/count")
			if err != nil {
				t.Fatalf("%s: GET localhost:8080: %v", e.name, err)
			}
		}
		if want := `"count":` + string(rune('0'+e.visits)); !strings.Contains(last, want) || !strings.Contains(last, `"schema":"v1"`) {
			t.Errorf("%s: api answered %q, want %s and the migration's schema", e.name, last, want)
		}
		page, err := eventually(env.Netns, tcp4("127.0.0.1:3000"), "/")
		if err != nil || !strings.Contains(page, "visits: "+string(rune('0'+e.visits+1))) {
			t.Errorf("%s: web answered %q, %v", e.name, page, err)
		}
	}
}

// TestLoadImageFormats loads the same image as a docker save archive
// (manifest.json only) and as an OCI layout (index.json only).
func TestLoadImageFormats(t *testing.T) {
	h := newHarness(t)
	full, err := os.ReadFile(testArchive)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		drop []string
	}{
		{"docker_save", []string{"index.json", "oci-layout"}},
		{"oci_layout", []string{"manifest.json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			tr, tw := tar.NewReader(bytes.NewReader(full)), tar.NewWriter(&out)
			for {
				hd, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				skip := false
				for _, d := range tt.drop {
					skip = skip || hd.Name == d
				}
				if skip {
					continue
				}
				tw.WriteHeader(hd)
				io.Copy(tw, tr)
			}
			tw.Close()
			path := filepath.Join(t.TempDir(), "image.tar")
			if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := h.client.ImageService().Delete(h.ctx, "docker.io/"+testImage); err != nil {
				t.Fatal(err)
			}
			names, err := h.engine.LoadImage(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(names, " ") != "docker.io/"+testImage {
				t.Fatalf("loaded %v", names)
			}
			if _, err := h.engine.localImage(h.ctx, h.client, testImage); err != nil {
				t.Fatalf("image not usable after load: %v", err)
			}
		})
	}
	t.Run("not_an_archive", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "junk.tar")
		os.WriteFile(path, []byte("not a tar"), 0o644)
		if _, err := h.engine.LoadImage(context.Background(), path); err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("err = %v, want one naming %s", err, path)
		}
	})
}
