package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type envJSON struct {
	Project   string `json:"project"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	IP        string `json:"ip"`
	Subnet    string `json:"subnet"`
	Workspace string `json:"workspace"`
	Netns     string `json:"netns"`
}

func (w *world) status(name string) envJSON {
	w.t.Helper()
	var e envJSON
	out := w.mustCilo("status", "--json", name)
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		w.t.Fatalf("status json: %v\n%s", err, out)
	}
	return e
}

// startServer runs the helper's HTTP server on addr inside env with cilo
// run, and stops it (through cilo's signal forwarding) at cleanup.
func (w *world) startServer(env, addr, reply string) {
	w.t.Helper()
	args := append([]string{"run", "-e", env, "--"}, helperArgv("serve", addr, reply)...)
	cmd := w.command(context.Background(), "", args...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	must(w.t, cmd.Start())
	w.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "listening" {
		w.t.Fatalf("server in %s did not start: %q %v", env, line, err)
	}
}

func TestTwoEnvsEachServeLocalhost3000(t *testing.T) {
	w := newWorld(t, 22)
	w.mustCilo("create", "alpha")
	w.mustCilo("create", "beta")
	w.startServer("alpha", "0.0.0.0:3000", "from-alpha")
	w.startServer("beta", "0.0.0.0:3000", "from-beta")
	a, b := w.status("alpha"), w.status("beta")
	if a.Subnet == b.Subnet {
		t.Fatalf("both envs got subnet %s", a.Subnet)
	}

	tests := []getCase{
		{"alpha_localhost", "alpha", "http://localhost:3000/", "from-alpha", false},
		{"beta_localhost", "beta", "http://localhost:3000/", "from-beta", false},
		{"alpha_cannot_reach_beta", "alpha", "http://" + b.IP + ":3000/", "", true},
		{"beta_cannot_reach_alpha", "beta", "http://" + a.IP + ":3000/", "", true},
	}
	w.checkGets(tests)
	for _, e := range []envJSON{a, b} {
		t.Run("host_reaches_"+e.Name, func(t *testing.T) {
			c := http.Client{Timeout: 2 * time.Second}
			resp, err := c.Get("http://" + e.IP + ":3000/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "from-"+e.Name {
				t.Fatalf("host got %q from %s", body, e.Name)
			}
		})
	}
}

func TestRunExitCodesArgsAndEnvironment(t *testing.T) {
	w := newWorld(t, 23)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	out, err := w.cilo(ctx, "", "run", "sh", "dev", "-c", "exit 7")
	if exitCode(err) != 7 {
		t.Fatalf("cilo run sh dev -c 'exit 7': exit %d, want 7\n%s", exitCode(err), out)
	}
	out, err = w.cilo(ctx, "", "run", "sh", "dev", "-c", `echo "$CILO_ENV|$CILO_PROJECT|$CILO_MODE|$CILO_DNS_SUFFIX|$CILO_BASE_URL|$CILO_IP|$(pwd)|$CILO_WORKSPACE"`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	st := w.status("dev")
	want := fmt.Sprintf("dev|demo-app|netns|test|http://demo-app.dev.test|%s|%s|%s", st.IP, st.Workspace, st.Workspace)
	if strings.TrimSpace(out) != want {
		t.Fatalf("env inside = %q\nwant        %q", strings.TrimSpace(out), want)
	}
	// From a subdirectory of the project, the command starts in the same
	// subdirectory of the workspace.
	out, err = w.cilo(ctx, filepath.Join(w.project, "sub"), "run", "-e", "dev", "--", "pwd")
	if err != nil || strings.TrimSpace(out) != filepath.Join(st.Workspace, "sub") {
		t.Fatalf("pwd from sub = %q, %v", out, err)
	}
	// Flags after the env reach the command verbatim.
	out, err = w.cilo(ctx, "", "run", "echo", "dev", "--help", "-e", "x")
	if err != nil || strings.TrimSpace(out) != "--help -e x" {
		t.Fatalf("echo dev --help -e x = %q, %v", out, err)
	}
	// cilo becomes the command, so a signal that kills the command kills
	// "cilo" as the caller sees it; with --rm cilo outlives the command
	// and reports 128+N, as a shell does.
	_, err = w.cilo(ctx, "", "run", "-e", "dev", "--", "sh", "-c", "kill -9 $$")
	if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("killed command: %v, want death by SIGKILL", err)
	}
	out, err = w.cilo(ctx, "", "run", "--rm", "-e", "dev-rm", "--", "sh", "-c", "kill -9 $$")
	if exitCode(err) != 137 {
		t.Fatalf("killed command with --rm: exit %d, want 137\n%s", exitCode(err), out)
	}
	if _, err := w.cilo(ctx, "", "status", "dev-rm"); exitCode(err) != 1 {
		t.Fatalf("env dev-rm survived --rm")
	}
	// Unknown commands: 127, like a shell.
	out, err = w.cilo(ctx, "", "run", "-e", "dev", "--", "no-such-command-cilo")
	if exitCode(err) != 127 || !strings.Contains(out, "no-such-command-cilo") {
		t.Fatalf("unknown command: exit %d\n%s", exitCode(err), out)
	}
	// The user's source tree is untouched by what runs in the env.
	w.mustCilo("run", "-e", "dev", "--", "sh", "-c", "echo changed > README && touch new-file")
	if b, _ := os.ReadFile(filepath.Join(w.project, "README")); string(b) != "hello\n" {
		t.Fatalf("source README changed to %q", b)
	}
	if _, err := os.Stat(filepath.Join(w.project, "new-file")); err == nil {
		t.Fatal("file created in the env appeared in the source tree")
	}
}

func TestRunForwardsSignals(t *testing.T) {
	w := newWorld(t, 23)
	w.mustCilo("create", "sig")
	tests := []struct {
		name string
		sig  syscall.Signal
		rm   bool
	}{
		{"term", syscall.SIGTERM, false},
		{"hup", syscall.SIGHUP, false},
		{"usr1", syscall.SIGUSR1, false},
		{"int", syscall.SIGINT, false},
		{"term_forwarded_with_rm", syscall.SIGTERM, true},
		{"int_forwarded_with_rm", syscall.SIGINT, true},
		{"usr1_forwarded_with_rm", syscall.SIGUSR1, true},
	}
	for _, tt := range tests {
		sig := tt.sig
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"run", "-e", "sig", "--"}
			if tt.rm {
				args = []string{"run", "--rm", "-e", "sig-rm", "--"}
			}
			args = append(args, helperArgv("wait-signal")...)
			cmd := w.command(context.Background(), "", args...)
			stdout, _ := cmd.StdoutPipe()
			must(t, cmd.Start())
			r := bufio.NewReader(stdout)
			if line, _ := r.ReadString('\n'); strings.TrimSpace(line) != "ready" {
				cmd.Process.Kill()
				t.Fatalf("helper not ready: %q", line)
			}
			cmd.Process.Signal(sig)
			rest, _ := io.ReadAll(r)
			err := cmd.Wait()
			if want := fmt.Sprintf("got %d", sig); strings.TrimSpace(string(rest)) != want || err != nil {
				t.Fatalf("after %v: %q, %v; want %q and exit 0", sig, rest, err, want)
			}
		})
	}
}

func TestRunDropsToSudoUser(t *testing.T) {
	w := newWorld(t, 24)
	name := fmt.Sprintf("cilo%05d", randUint32()%100000)
	if out, err := exec.Command("useradd", "--create-home", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", "--remove", name).Run() })
	uidOut, _ := exec.Command("id", "-u", name).Output()
	gidOut, _ := exec.Command("id", "-g", name).Output()
	uid, gid := strings.TrimSpace(string(uidOut)), strings.TrimSpace(string(gidOut))
	// The user's own project: the workspace keeps its ownership.
	must(t, exec.Command("chown", "-R", uid+":"+gid, w.project).Run())
	// The helper binary must be readable by the user.
	bin := filepath.Join(w.root, "helper")
	must(t, exec.Command("cp", os.Args[0], bin).Run())
	os.Chmod(bin, 0o755)

	w.env = append(w.env, "SUDO_UID="+uid, "SUDO_GID="+gid, "SUDO_USER="+name)
	out := w.mustCilo("run", "-e", "dropped", "--", "env", helperEnv+"=1", bin, "whoami")
	f := strings.Fields(out)
	if len(f) != 5 || f[0] != uid || f[1] != gid || f[3] != "dropped" || f[4] != "/home/"+name {
		t.Fatalf("whoami in env = %q; want uid %s gid %s env dropped home /home/%s", out, uid, gid, name)
	}
	// Files the command makes in the workspace belong to the user.
	ws := w.status("dropped").Workspace
	w.mustCilo("run", "-e", "dropped", "--", "touch", "made-by-user")
	var st syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(ws, "made-by-user"), &st))
	if fmt.Sprint(st.Uid) != uid {
		t.Fatalf("file made in the env is owned by uid %d, want %s", st.Uid, uid)
	}
}

func TestDestroyLeavesNothing(t *testing.T) {
	w := newWorld(t, 24)
	w.mustCilo("create", "gone")
	e := w.status("gone")
	w.startServer("gone", "0.0.0.0:3001", "x")
	w.mustCilo("destroy", "--force", "gone")
	w.assertNothingLeft()
	for _, p := range []string{e.Workspace, filepath.Join(w.root, "run", "envs", "demo-app", "gone")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s survived destroy", p)
		}
	}
	if out := w.mustCilo("list", "--all", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("list after destroy = %s", out)
	}
	if _, err := w.cilo(context.Background(), "", "status", "gone"); exitCode(err) != 1 {
		t.Errorf("status of destroyed env: exit %d, want 1", exitCode(err))
	}
}

func TestParallelRunsGetDistinctEnvs(t *testing.T) {
	w := newWorld(t, 19)
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			outs[i], errs[i] = w.cilo(ctx, "", "run", "-e", fmt.Sprintf("par-%02d", i), "--", "sh", "-c", "echo $CILO_IP")
		}(i)
	}
	wg.Wait()
	ips := map[string]bool{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("run %d: %v\n%s", i, errs[i], outs[i])
		}
		ips[strings.TrimSpace(outs[i])] = true
	}
	if len(ips) != n {
		t.Fatalf("%d distinct addresses for %d envs: %v", len(ips), n, ips)
	}
	var envs []envJSON
	out := w.mustCilo("list", "--json")
	if err := json.Unmarshal([]byte(out), &envs); err != nil {
		t.Fatalf("state unreadable after parallel runs: %v\n%s", err, out)
	}
	subnets := map[string]bool{}
	for _, e := range envs {
		if e.Status != "running" {
			t.Errorf("env %s is %s", e.Name, e.Status)
		}
		subnets[e.Subnet] = true
	}
	if len(envs) != n || len(subnets) != n {
		t.Fatalf("%d envs with %d distinct subnets, want %d", len(envs), len(subnets), n)
	}
}

func TestBadInput(t *testing.T) {
	w := newWorld(t, 24)
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"uppercase", []string{"create", "Agent"}, 2, "a-z, 0-9"},
		{"empty", []string{"create", ""}, 2, "empty"},
		{"too_long", []string{"create", strings.Repeat("a", 64)}, 2, "at most 63"},
		{"unicode", []string{"create", "agént"}, 2, "contains"},
		{"traversal", []string{"create", "../etc"}, 2, "contains"},
		{"create_many_one_bad", []string{"create", "fine-1", "Bad", "fine-2"}, 2, "a-z, 0-9"},
		{"create_many_twice", []string{"create", "same", "same"}, 2, "named twice"},
		{"run_traversal", []string{"run", "-e", "../x", "--", "true"}, 2, "contains"},
		{"run_missing_env", []string{"run", "true"}, 2, "needs a command and an env"},
		{"destroy_unknown", []string{"destroy", "--force", "nope"}, 1, "not found"},
		{"destroy_without_force", []string{"destroy", "nope2"}, 1, "not found"},
		{"bad_pool_flag", []string{"--pool", "10.0.0.0/30", "list"}, 2, "between a /8 and a /24"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := w.cilo(context.Background(), "", tt.args...)
			if exitCode(err) != tt.code || !strings.Contains(out, tt.msg) {
				t.Fatalf("cilo %q: exit %d, output %q; want exit %d mentioning %q", tt.args, exitCode(err), out, tt.code, tt.msg)
			}
		})
	}
	w.assertNothingLeft()
	if _, err := os.Stat(filepath.Join(w.root, "state", "workspaces")); err == nil {
		ents, _ := os.ReadDir(filepath.Join(w.root, "state", "workspaces", "envs"))
		if len(ents) > 0 {
			t.Errorf("workspaces left after bad input: %v", ents)
		}
	}
}

func TestExhaustedPool(t *testing.T) {
	w := newWorld(t, 24) // exactly one /24
	w.mustCilo("create", "only")
	out, err := w.cilo(context.Background(), "", "create", "second")
	if exitCode(err) != 1 || !strings.Contains(out, "address pool exhausted") || !strings.Contains(out, "--pool") {
		t.Fatalf("second env in a one-subnet pool: exit %d\n%s", exitCode(err), out)
	}
	var envs []envJSON
	json.Unmarshal([]byte(w.mustCilo("list", "--json")), &envs)
	if len(envs) != 1 {
		t.Fatalf("%d envs after failed create, want 1", len(envs))
	}
}

func TestWithoutPrivilege(t *testing.T) {
	w := newWorld(t, 24)
	cmd := w.command(context.Background(), "", "create", "noroot")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if exitCode(err) != 1 || !strings.Contains(string(out), "run it as root") {
		t.Fatalf("create as nobody: exit %d\n%s", exitCode(err), out)
	}
	w.assertNothingLeft()
}

func TestRunNamesEnvAfterBranch(t *testing.T) {
	w := newWorld(t, 24)
	git := exec.Command("git", "checkout", "-q", "-b", "Feature/Login_v2")
	git.Dir = w.project
	if out, err := git.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	out := w.mustCilo("run", "--", "sh", "-c", "echo $CILO_ENV")
	if strings.TrimSpace(out) != "feature-login-v2" {
		t.Fatalf("env from branch Feature/Login_v2 = %q, want feature-login-v2", out)
	}
}

func TestCompletionAndHelp(t *testing.T) {
	w := newWorld(t, 24)
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out := w.mustCilo("completion", shell); !strings.Contains(out, "cilo") {
			t.Errorf("completion %s: %q", shell, out[:min(len(out), 200)])
		}
	}
	for _, c := range []string{"run", "create", "up", "down", "destroy", "list", "status", "path", "shell", "doctor", "diff", "merge"} {
		if out := w.mustCilo(c, "--help"); !strings.Contains(out, "Usage:") {
			t.Errorf("%s --help: %q", c, out)
		}
	}
}

// TestRunPassesTerminal: under a pseudo-terminal (script(1)), the command
// in the env sees the terminal on stdin and stdout, as an interactive shell
// needs.
func TestRunPassesTerminal(t *testing.T) {
	w := newWorld(t, 24)
	if _, err := exec.LookPath("script"); err != nil {
		t.Fatalf("script(1) from bsdutils is needed: %v", err)
	}
	inner := ciloBin + " run -e term -- sh -c 'test -t 0 && test -t 1 && echo tty-ok'"
	cmd := exec.Command("script", "-qec", inner, "/dev/null")
	cmd.Dir, cmd.Env = w.project, w.env
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tty-ok") {
		t.Fatalf("under a terminal: %v\n%s", err, out)
	}
}

// TestCreateMany makes several envs in one call: each gets its own subnet,
// and one that cannot be made does not stop the others.
func TestCreateMany(t *testing.T) {
	w := newWorld(t, 22)
	w.mustCilo("create", "taken")
	out, err := w.cilo(context.Background(), "", "create", "m1", "taken", "m2", "m3")
	if exitCode(err) != 1 || !strings.Contains(out, "already exists") {
		t.Fatalf("create with one existing env: exit %d\n%s", exitCode(err), out)
	}
	var envs []envJSON
	must(t, json.Unmarshal([]byte(w.mustCilo("list", "--json")), &envs))
	subnets := map[string]string{}
	for _, e := range envs {
		if prev, ok := subnets[e.IP]; ok {
			t.Fatalf("%s and %s share %s", prev, e.Name, e.IP)
		}
		subnets[e.IP] = e.Name
		if e.Name != "taken" && !strings.Contains(out, "created "+e.Name+" ") {
			t.Errorf("env %s not reported as created:\n%s", e.Name, out)
		}
	}
	if len(envs) != 4 {
		t.Fatalf("%d envs after creating 3 more, want 4: %+v", len(envs), envs)
	}
	for _, n := range []string{"m1", "m2", "m3"} {
		if got := strings.TrimSpace(w.mustCilo("run", "sh", n, "-c", "echo $CILO_ENV")); got != n {
			t.Fatalf("run in %s: %q", n, got)
		}
	}
}
