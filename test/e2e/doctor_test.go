package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilo-dev/cilo/nsnet/nsfs"
)

// TestDoctorFixesInterruptedCreateAndOrphans plays a crash: an env whose
// create intent belongs to a dead process, and a namespace no env owns.
func TestDoctorFixesInterruptedCreateAndOrphans(t *testing.T) {
	w := newWorld(t, 23)
	w.mustCilo("create", "healthy")
	w.mustCilo("create", "crashed")

	// Rewrite the state as a cilo killed in the middle of creating
	// "crashed" would have left it.
	path := filepath.Join(w.root, "state", "envs", "demo-app.crashed.json")
	b, err := os.ReadFile(path)
	must(t, err)
	var rec map[string]any
	must(t, json.Unmarshal(b, &rec))
	env := rec["env"].(map[string]any)
	env["status"] = "creating"
	env["intent"] = map[string]any{"op": "create", "pid": 999999999, "started": "2026-01-01T00:00:00Z"}
	b, _ = json.Marshal(rec)
	must(t, os.WriteFile(path, b, 0o644))

	orphan := w.prefix + "-orphan-ns"
	must(t, nsfs.Create(orphan))
	t.Cleanup(func() { nsfs.Delete(orphan) })
	// A destroy killed between removing the record and its index claim.
	claim := filepath.Join(w.root, "state", "index", "200")
	must(t, os.Symlink("demo-app.gone.json", claim))

	out, err := w.cilo(context.Background(), "", "doctor")
	if exitCode(err) != 1 || !strings.Contains(out, "interrupted create") || !strings.Contains(out, orphan) || !strings.Contains(out, "[200] are claimed by no env") {
		t.Fatalf("doctor: exit %d\n%s", exitCode(err), out)
	}
	if out, err := w.cilo(context.Background(), "", "run", "-e", "crashed", "--", "true"); err == nil || !strings.Contains(out, "doctor --fix") {
		t.Fatalf("run in a half-created env: %v\n%s", err, out)
	}
	w.mustCilo("doctor", "--fix")
	if out, err := w.cilo(context.Background(), "", "doctor"); err != nil {
		t.Fatalf("doctor after --fix: %v\n%s", err, out)
	}
	if nsfs.Exists(orphan) {
		t.Fatal("orphan namespace survived doctor --fix")
	}
	if _, err := os.Lstat(claim); err == nil {
		t.Fatal("stale index claim survived doctor --fix")
	}
	var envs []envJSON
	must(t, json.Unmarshal([]byte(w.mustCilo("list", "--json")), &envs))
	if len(envs) != 1 || envs[0].Name != "healthy" {
		t.Fatalf("envs after fix: %+v", envs)
	}
	// The healthy env still works.
	if out := w.mustCilo("run", "-e", "healthy", "--", "echo", "ok"); strings.TrimSpace(out) != "ok" {
		t.Fatalf("healthy env after fix: %q", out)
	}
}

// TestDoctorFindsDNSServerDown: with envs alive, a DNS server that is
// gone is a finding (their names no longer resolve), and --fix starts it.
func TestDoctorFindsDNSServerDown(t *testing.T) {
	w := newWorld(t, 24)
	w.mustCilo("create", "a")
	if out := w.mustCilo("doctor"); !strings.Contains(out, "dns server") || !strings.Contains(out, "answers on") {
		t.Fatalf("doctor with the DNS server up:\n%s", out)
	}

	pid := w.runPID(dnsPIDFile)
	if pid <= 1 {
		t.Fatal("create started no DNS server (no pidfile)")
	}
	w.stopRun(dnsPIDFile)
	for deadline := time.Now().Add(5 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("DNS server %d still running", pid)
		}
	}

	out, err := w.cilo(context.Background(), "", "doctor")
	if exitCode(err) != 1 || !strings.Contains(out, "not running") || !strings.Contains(out, "names do not resolve") {
		t.Fatalf("doctor with the DNS server down: exit %d\n%s", exitCode(err), out)
	}
	w.mustCilo("doctor", "--fix")
	if out := w.mustCilo("doctor"); !strings.Contains(out, "answers on") {
		t.Fatalf("doctor after --fix:\n%s", out)
	}
}
