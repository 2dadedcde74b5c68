package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// policies has one service per restart policy and exit status that
// matters; every one exits soon after it starts.
const policies = `services:
  crash-on-failure:
    image: cilo-e2e/testsvc:latest
    command: ["crash", "-after", "300ms", "-code", "3"]
    restart: on-failure
  ok-on-failure:
    image: cilo-e2e/testsvc:latest
    command: ["exit", "0"]
    restart: on-failure
  limited:
    image: cilo-e2e/testsvc:latest
    command: ["crash", "-after", "100ms", "-code", "3"]
    restart: on-failure:2
  never:
    image: cilo-e2e/testsvc:latest
    command: ["crash", "-after", "100ms", "-code", "3"]
    restart: "no"
  always:
    image: cilo-e2e/testsvc:latest
    command: ["exit", "0"]
    restart: always
  unless:
    image: cilo-e2e/testsvc:latest
    command: ["exit", "0"]
    restart: unless-stopped
`

type psJSON struct {
	Service  string  `json:"service"`
	Status   string  `json:"status"`
	ExitCode *uint32 `json:"exit_code"`
	Restarts int     `json:"restarts"`
}

func (w *world) ps(env string) map[string]psJSON {
	w.t.Helper()
	var cs []psJSON
	must(w.t, json.Unmarshal([]byte(w.mustCilo("ps", "--json", env)), &cs))
	out := map[string]psJSON{}
	for _, c := range cs {
		out[c.Service] = c
	}
	return out
}

// TestRestartPoliciesAfterCLIExited brings services up with `cilo up`,
// whose process is gone when the services start crashing, and expects
// each to be restarted exactly as its policy says; `cilo down` in the
// middle of the crash loops leaves nothing to revive, and the supervisor
// exits once it has nothing to watch.
func TestRestartPoliciesAfterCLIExited(t *testing.T) {
	w := composeWorld(t)
	must(t, os.WriteFile(filepath.Join(w.project, "compose.yaml"), []byte(policies), 0o644))
	w.mustCilo("up", "pol")
	if w.runPID(supervisorPIDFile) == 0 {
		t.Fatal("cilo up of services with restart policies started no supervisor")
	}

	deadline := time.Now().Add(30 * time.Second)
	var ps map[string]psJSON
	for {
		ps = w.ps("pol")
		l := ps["limited"]
		if l.Status == "stopped" && l.Restarts == 2 && ps["crash-on-failure"].Restarts >= 2 &&
			ps["always"].Restarts >= 2 && ps["unless"].Restarts >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarts not as the policies say within 30 s: %+v\nsupervisor log:\n%s", ps, w.supervisorLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// By now a wrong restart of these would long have happened (the
	// first backoff is 100 ms).
	for _, tt := range []struct {
		service string
		exit    uint32
	}{{"ok-on-failure", 0}, {"never", 3}, {"limited", 3}} {
		c := ps[tt.service]
		if c.Status != "stopped" || c.ExitCode == nil || *c.ExitCode != tt.exit {
			t.Errorf("%s: %+v, want stopped with status %d", tt.service, c, tt.exit)
		}
	}
	for service, want := range map[string]int{"ok-on-failure": 0, "never": 0, "limited": 2} {
		if got := ps[service].Restarts; got != want {
			t.Errorf("%s restarted %d times, want %d", service, got, want)
		}
	}

	w.mustCilo("down", "pol")
	time.Sleep(time.Second)
	ns := w.containerdNamespace()
	for _, what := range []string{"containers", "tasks"} {
		out, err := exec.Command("ctr", "-n", ns, what, "ls", "-q").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			t.Fatalf("%s a second after cilo down: %q %v", what, out, err)
		}
	}
	for i := 0; w.runPID(supervisorPIDFile) != 0; i++ {
		if i > 100 {
			t.Fatalf("supervisor still runs 10 s after the last service went down\n%s", w.supervisorLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *world) supervisorLog() string {
	b, _ := os.ReadFile(filepath.Join(w.root, "state", "logs", "supervise.log"))
	return string(b)
}
