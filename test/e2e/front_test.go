package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFrontRunsUpEnvsAlone checks cilo's front program: a run in an env
// that is up works with cilo alone (no cilo-core anywhere), gives the
// command exactly what cilo-core gives it, and everything else is handed
// to cilo-core (which this copy cannot find, so it says so).
func TestFrontRunsUpEnvsAlone(t *testing.T) {
	w := newWorld(t, 24)
	w.mustCilo("create", "front")
	alone, run := frontAlone(t, w)

	// What the command sees: variables, directory, names, interfaces.
	probe := `env | grep ^CILO_ | sort; pwd; cat /etc/hosts /etc/resolv.conf; ls /sys/class/net; exit 3`
	fast, code := run(alone, "run", "sh", "front", "-c", probe)
	if code != 3 {
		t.Fatalf("front alone: exit %d, want 3\n%s", code, fast)
	}
	slow, code := run(filepath.Join(filepath.Dir(ciloBin), "cilo-core"), "run", "sh", "front", "-c", probe)
	if code != 3 || slow != fast {
		t.Fatalf("cilo-core gave the command something else (exit %d):\n%s\nthe front gave:\n%s", code, slow, fast)
	}
	if !strings.Contains(fast, "CILO_ENV=front") || !strings.Contains(fast, "/sub\n") {
		t.Fatalf("run in env: %s", fast)
	}
	if out, code := run(alone, "run", "-e", "front", "--", "sh", "-c", "exit 4"); code != 4 {
		t.Fatalf("front alone, -e form: exit %d\n%s", code, out)
	}

	// Everything the front does not do itself goes to cilo-core.
	for _, args := range [][]string{
		{"list"},
		{"run", "true", "missing"}, // an env to create
		{"run", "--rm", "-e", "front", "--", "true"}, // a flag
		{"run", "no-such-command-xyz", "front"},      // an error to report
	} {
		out, code := run(alone, args...)
		if code == 0 || !strings.Contains(out, "cilo-core is neither beside cilo nor on PATH") {
			t.Errorf("cilo %s without cilo-core: exit %d\n%s", strings.Join(args, " "), code, out)
		}
	}
	if out, err := w.cilo(context.Background(), "", "run", "no-such-command-xyz", "front"); exitCode(err) != 127 || !strings.Contains(out, "no-such-command-xyz") {
		t.Fatalf("missing command through cilo: exit %d\n%s", exitCode(err), out)
	}
}

// TestFrontReadsConfigAsCoreDecodedIt: with config files that need
// decoding (the front has no YAML parser), the front runs alone on what
// cilo-core read before, and hands an edited file to cilo-core until
// cilo-core has read it.
func TestFrontReadsConfigAsCoreDecodedIt(t *testing.T) {
	w := newWorld(t, 24)
	global := filepath.Join(t.TempDir(), "config.yml")
	must(t, os.WriteFile(global, []byte("dns_suffix: front.test\n"), 0o644))
	for i, kv := range w.env {
		if strings.HasPrefix(kv, "CILO_CONFIG=") {
			w.env[i] = "CILO_CONFIG=" + global
		}
	}
	projectFile := filepath.Join(w.project, ".cilo", "config.yml")
	must(t, os.MkdirAll(filepath.Dir(projectFile), 0o755))
	must(t, os.WriteFile(projectFile, []byte("project: renamed\n"), 0o644))
	w.mustCilo("create", "cfg")
	alone, run := frontAlone(t, w)

	probe := []string{"run", "sh", "cfg", "-c", "echo $CILO_PROJECT $CILO_DNS_SUFFIX"}
	if out, code := run(alone, probe...); code != 0 || out != "renamed front.test\n" {
		t.Fatalf("front alone with config files: exit %d\n%s", code, out)
	}
	for _, edit := range []struct{ file, text string }{
		{projectFile, "project: renamed # edited\n"},
		{global, "dns_suffix: front.test # edited\n"},
	} {
		must(t, os.WriteFile(edit.file, []byte(edit.text), 0o644))
		if out, code := run(alone, probe...); code == 0 || !strings.Contains(out, "cilo-core is neither beside cilo nor on PATH") {
			t.Fatalf("front alone after editing %s: exit %d\n%s", edit.file, code, out)
		}
		w.mustCilo("list")
		if out, code := run(alone, probe...); code != 0 || out != "renamed front.test\n" {
			t.Fatalf("front alone once cilo-core read %s: exit %d\n%s", edit.file, code, out)
		}
	}
}

// frontAlone copies the front where no cilo-core is beside it or on PATH,
// and returns it with a way to run a program in w's project.
func frontAlone(t *testing.T, w *world) (string, func(bin string, args ...string) (string, int)) {
	alone := filepath.Join(t.TempDir(), "cilo")
	b, err := os.ReadFile(ciloBin)
	must(t, err)
	must(t, os.WriteFile(alone, b, 0o755))
	env := append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, withoutPath(w.env)...)
	return alone, func(bin string, args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir, cmd.Env = filepath.Join(w.project, "sub"), env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), exitCode(err)
	}
}

func withoutPath(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PATH=") {
			out = append(out, kv)
		}
	}
	return out
}
