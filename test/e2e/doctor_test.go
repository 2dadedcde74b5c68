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

// TestDoctorFindsLostFlush plays a base whose flush after its create was
// lost (the syncer died): doctor reports it, and --fix flushes it.
func TestDoctorFindsLostFlush(t *testing.T) {
	w := newWorld(t, 24)
	w.mustCilo("create", "a")
	bases, err := filepath.Glob(filepath.Join(w.root, "state", "workspaces", "b", "*", "meta.json"))
	if err != nil || len(bases) != 1 {
		t.Fatalf("bases: %v %v, want one", bases, err)
	}
	meta := bases[0]
	// Wait for the real flush, then undo its mark as a lost one would
	// have left it, written two minutes ago.
	var b map[string]any
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		data, err := os.ReadFile(meta)
		if err != nil {
			t.Fatal(err)
		}
		b = nil
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatal(err)
		}
		if b["pendingBoot"] == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("base never flushed")
		}
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	b["pendingBoot"] = strings.TrimSpace(string(boot))
	b["created"] = time.Now().Add(-2 * time.Minute).UTC().Format(time.RFC3339Nano)
	data, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(meta, data, 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := w.cilo(context.Background(), "", "doctor")
	if exitCode(err) != 1 || !strings.Contains(out, "workspace bases") || !strings.Contains(out, "flush was lost") {
		t.Fatalf("doctor with a lost flush: exit %d\n%s", exitCode(err), out)
	}
	w.mustCilo("doctor", "--fix")
	if out := w.mustCilo("doctor"); !strings.Contains(out, "workspace bases: on disk") {
		t.Fatalf("doctor after --fix:\n%s", out)
	}
	data, err = os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "pendingBoot") {
		t.Fatalf("base still marked unflushed after doctor --fix:\n%s", data)
	}
}
