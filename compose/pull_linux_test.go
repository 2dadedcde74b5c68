package compose

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	dockerconfig "github.com/docker/cli/cli/config"
)

// registry is a minimal registry on loopback serving the test image as
// cilo-test/testsvc:latest, with basic auth.
type registry struct {
	addr     string
	pulls    atomic.Int32 // tag resolutions
	manifest []byte
	blobs    map[string][]byte // by digest
}

func startRegistry(t *testing.T) *registry {
	t.Helper()
	b, err := os.ReadFile(testArchive)
	if err != nil {
		t.Fatal(err)
	}
	r := &registry{blobs: map[string][]byte{}}
	tr := tar.NewReader(bytes.NewReader(b))
	var index []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if d, ok := strings.CutPrefix(h.Name, "blobs/sha256/"); ok && d != "" {
			r.blobs["sha256:"+d] = data
		}
		if h.Name == "index.json" {
			index = data
		}
	}
	var idx struct {
		Manifests []struct{ Digest string } `json:"manifests"`
	}
	json.Unmarshal(index, &idx)
	r.manifest = r.blobs[idx.Manifests[0].Digest]
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	srv := &http.Server{Handler: r}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return r
}

func (r *registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if u, p, ok := req.BasicAuth(); !ok || u != "cilo" || p != "secret" {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	path := req.URL.Path
	switch {
	case path == "/v2/" || path == "/v2":
		w.WriteHeader(http.StatusOK)
	case strings.HasPrefix(path, "/v2/cilo-test/testsvc/manifests/"):
		if strings.HasSuffix(path, "/latest") {
			r.pulls.Add(1) // resolving the tag: once per pull
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", digestOf(r.manifest))
		w.Header().Set("Content-Length", strconv.Itoa(len(r.manifest)))
		if req.Method == http.MethodGet {
			w.Write(r.manifest)
		}
	case strings.HasPrefix(path, "/v2/cilo-test/testsvc/blobs/"):
		b, ok := r.blobs[strings.TrimPrefix(path, "/v2/cilo-test/testsvc/blobs/")]
		if !ok {
			http.NotFound(w, req)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		if req.Method == http.MethodGet {
			w.Write(b)
		}
	default:
		http.NotFound(w, req)
	}
}

// TestPullWithAuthAndPolicy pulls a missing image from a registry on
// loopback with credentials from DOCKER_CONFIG, shows progress, and
// honours pull_policy.
func TestPullWithAuthAndPolicy(t *testing.T) {
	h := newHarness(t)
	reg := startRegistry(t)
	cfg := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("cilo:secret"))
	os.WriteFile(filepath.Join(cfg, "config.json"), []byte(`{"auths":{"`+reg.addr+`":{"auth":"`+auth+`"}}}`), 0o600)
	// DOCKER_CONFIG is what a user sets; docker/cli reads it once per
	// process, so the test also points the already-initialised value at
	// its own directory.
	t.Setenv("DOCKER_CONFIG", cfg)
	oldDir := dockerconfig.Dir()
	dockerconfig.SetDir(cfg)
	t.Cleanup(func() { dockerconfig.SetDir(oldDir) })
	var progress lockedBuffer
	o := h.opts
	o.Progress = &progress
	e := New(o)
	defer e.Close()
	ref := reg.addr + "/cilo-test/testsvc:latest"

	tests := []struct {
		name      string
		policy    string
		wantPulls int32 // pulls so far
		wantErr   string
	}{
		{"never_and_missing_fails", "never", 0, "pull_policy is never"},
		{"missing_pulls", "missing", 1, ""},
		{"missing_uses_local", "missing", 1, ""},
		{"always_pulls_again", "always", 2, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := h.newEnv(i, "pull"+string(rune('a'+i)), map[string]string{"compose.yaml": "services:\n  s:\n    image: " + ref + "\n    pull_policy: " + tt.policy + "\n    command: [\"http\", \"-listen\", \":80\"]\n"})
			_, err := e.Up(context.Background(), env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got := reg.pulls.Load(); got != tt.wantPulls {
				t.Errorf("pulled %d times, want %d", got, tt.wantPulls)
			}
		})
	}
	if !strings.Contains(progress.String(), "pulling "+ref) {
		t.Errorf("no progress shown: %q", progress.String())
	}
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
