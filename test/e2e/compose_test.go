package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilo-dev/cilo/test/images"
)

// composeWorld is a world with its own containerd namespace and the test
// image loaded through `cilo image load` (so through cilo-compose).
func composeWorld(t *testing.T) *world {
	t.Helper()
	w := newWorld(t, 22)
	if out, err := exec.Command("ctr", "version").CombinedOutput(); err != nil {
		t.Fatalf("containerd is not running (%v: %s): run scripts/ensure-containerd.sh as root", err, out)
	}
	ns := fmt.Sprintf("cilo-e2e-%s", w.prefix)
	w.env = append(w.env, "CILO_CONTAINERD_NAMESPACE="+ns)
	t.Cleanup(func() {
		// After the world's own cleanup destroyed the envs (cleanups run
		// last-in first-out, so this one runs first: destroy here). The
		// restart supervisor exits by itself then, unless a test failed
		// halfway.
		w.cleanup()
		w.stopRun(supervisorPIDFile)
		exec.Command("sh", "-c", "ctr -n "+ns+" images ls -q | xargs -r ctr -n "+ns+" images rm; ctr -n "+ns+" content ls -q | xargs -r ctr -n "+ns+" content rm; ctr namespaces rm "+ns).Run()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	archive, err := images.TestServiceArchive(ctx, "cilo-e2e/testsvc:latest", t.TempDir())
	if err != nil {
		t.Fatalf("build test image: %v", err)
	}
	if out := w.mustCilo("image", "load", archive); !strings.Contains(out, "cilo-e2e/testsvc") {
		t.Fatalf("cilo image load: %q", out)
	}
	return w
}

// containerdNamespace is the world's own containerd namespace.
func (w *world) containerdNamespace() string {
	ns := ""
	for _, kv := range w.env {
		if v, ok := strings.CutPrefix(kv, "CILO_CONTAINERD_NAMESPACE="); ok {
			ns = v
		}
	}
	if ns == "" {
		w.t.Fatal("world has no containerd namespace: make it with composeWorld")
	}
	return ns
}

const composeFile = `services:
  db:
    image: cilo-e2e/testsvc:latest
    command: ["http", "-listen", ":5432", "-name", "db"]
    environment:
      CILO_MARK: ${MARK:-unset}
    ports: ["5432:5432"]
  api:
    image: cilo-e2e/testsvc:latest
    command: ["http", "-listen", ":80", "-name", "api", "-require", "http://db:5432/"]
    depends_on: [db]
    ports: ["8080:80"]
`

type serviceJSON struct {
	Name  string   `json:"name"`
	Addrs []string `json:"addrs"`
}

func TestComposeThroughCLI(t *testing.T) {
	w := composeWorld(t)
	must(t, os.WriteFile(filepath.Join(w.project, "compose.yaml"), []byte(composeFile), 0o644))
	git := exec.Command("sh", "-c", "git add -A && git -c user.name=t -c user.email=t@t commit -qm compose")
	git.Dir = w.project
	must(t, git.Run())

	// Each env marks its own db through its own workspace's .env.
	for _, e := range []string{"one", "two"} {
		w.mustCilo("create", e)
		w.mustCilo("run", "-e", e, "--", "sh", "-c", "echo MARK="+e+" > .env")
		w.mustCilo("up", e)
	}
	dbAddr := map[string]string{}
	for _, e := range []string{"one", "two"} {
		var st struct {
			Services []serviceJSON `json:"services"`
		}
		must(t, json.Unmarshal([]byte(w.mustCilo("status", "--json", e)), &st))
		for _, s := range st.Services {
			if s.Name == "db" && len(s.Addrs) > 0 {
				dbAddr[e] = s.Addrs[0]
			}
		}
		if dbAddr[e] == "" {
			t.Fatalf("env %s has no db address: %+v", e, st)
		}
	}

	tests := []getCase{
		{"one_localhost_published", "one", "http://localhost:5432/", "db one", false},
		{"two_localhost_published", "two", "http://localhost:5432/", "db two", false},
		{"one_bare_name", "one", "http://db:5432/", "db one", false},
		{"one_full_name", "one", "http://db.one.test:5432/", "db one", false},
		{"two_api_through_published_port", "two", "http://127.0.0.1:8080/", "api", false},
		{"one_cannot_reach_two_db", "one", "http://" + dbAddr["two"] + ":5432/", "", true},
	}
	w.checkGets(tests)
	for e, addr := range dbAddr {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://" + addr + ":5432/")
		if err != nil {
			t.Fatalf("host to %s's db: %v", e, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(body)) != "db "+e {
			t.Fatalf("host got %q from %s's db", body, e)
		}
	}

	var ps []map[string]any
	must(t, json.Unmarshal([]byte(w.mustCilo("ps", "--json", "one")), &ps))
	if len(ps) != 2 {
		t.Fatalf("cilo ps one: %d containers, want 2", len(ps))
	}
	if out := w.mustCilo("exec", "-T", "one", "db", "/testsvc", "exit", "0"); out != "" {
		t.Logf("exec output: %q", out)
	}
	if _, err := w.cilo(context.Background(), "", "exec", "-T", "one", "db", "/testsvc", "exit", "5"); exitCode(err) != 5 {
		t.Fatalf("cilo exec exit status: %d, want 5", exitCode(err))
	}
	w.mustCilo("down", "one")
	var after []map[string]any
	json.Unmarshal([]byte(w.mustCilo("ps", "--json", "one")), &after)
	for _, c := range after {
		if c["status"] == "running" {
			t.Fatalf("container still running after down: %v", c)
		}
	}
	// -f picks other files for one env; paths outside the project are refused.
	must(t, os.WriteFile(filepath.Join(w.project, "alt.yaml"), []byte("services:\n  solo:\n    image: cilo-e2e/testsvc:latest\n    command: [\"sleep\"]\n"), 0o644))
	if _, err := w.cilo(context.Background(), "", "up", "-f", "../outside.yaml", "alt"); exitCode(err) != 2 {
		t.Fatalf("up -f ../outside.yaml: exit %d, want 2", exitCode(err))
	}
	w.mustCilo("up", "-f", "alt.yaml", "alt")
	var alt []map[string]any
	must(t, json.Unmarshal([]byte(w.mustCilo("ps", "--json", "alt")), &alt))
	if len(alt) != 1 || alt[0]["service"] != "solo" {
		t.Fatalf("cilo up -f alt.yaml: containers %v, want only solo", alt)
	}
	w.mustCilo("destroy", "--force", "one", "two", "alt")
	if out, _ := exec.Command("ctr", "-n", w.containerdNamespace(), "containers", "ls", "-q").Output(); strings.TrimSpace(string(out)) != "" {
		t.Fatalf("containers left after destroy: %s", out)
	}
	w.assertNothingLeft()
}
