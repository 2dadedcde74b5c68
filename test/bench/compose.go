package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v4"
)

// composeGroup measures `cilo up`/`cilo down` of the bundled example
// (examples/counter: kv, migrate, api, web) against podman-compose with the
// same locally built images, and the api's time to first response through
// `cilo run`. Each run uses its own state root, address pool slice, name
// prefix and containerd namespace.
func composeGroup() Group {
	return Group{Name: "compose", Command: "sudo go run ./test/bench -only compose", Run: runCompose}
}

const composeServices = "kv migrate api web"

func runCompose(ctx context.Context, env *Env) ([]Row, error) {
	repo, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	w, err := newBenchWorld(env, "cbn", "10.233.248.0/22")
	if err != nil {
		return nil, err
	}
	defer w.close()
	root, project := w.root, filepath.Join(repo, "examples", "counter")
	w.project = project
	w.vars = append(w.vars, "CILO_CONTAINERD_NAMESPACE=cilo-bench")
	cilo := func(args ...string) *exec.Cmd { return w.command(ctx, args...) }
	run := func(cmd *exec.Cmd) (time.Duration, error) {
		start := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("%v: %w: %s", cmd.Args, err, b)
		}
		return time.Since(start), nil
	}

	env.Logf("building the example's images")
	var archives []string
	for _, s := range strings.Fields(composeServices) {
		out := filepath.Join(root, s+".tar")
		if _, err := run(exec.CommandContext(ctx, "go", "run", "./test/images/mkimage", "-ref", "counter-"+s, "-o", out,
			"-go", "./examples/counter/"+s+"=/"+s, "-entrypoint", "/"+s)); err != nil {
			return nil, err
		}
		archives = append(archives, out)
		if _, err := run(cilo("image", "load", out)); err != nil {
			return nil, err
		}
	}
	defer exec.Command("ctr", "namespaces", "rm", "cilo-bench").Run()
	defer func() {
		for _, s := range strings.Fields(composeServices) {
			exec.Command("ctr", "-n", "cilo-bench", "images", "rm", "--sync", "docker.io/library/counter-"+s+":latest").Run()
		}
	}()

	const n = 3
	var ups, downs, firsts []time.Duration
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("bench-%d", i)
		if _, err := run(cilo("create", name)); err != nil {
			return nil, err
		}
		d, err := run(cilo("up", name))
		if err != nil {
			return nil, err
		}
		ups = append(ups, d)
		if d, err = run(cilo("down", name)); err != nil {
			return nil, err
		}
		downs = append(downs, d)
		// Time to first response: services down, `cilo run` starts them
		// (waiting for depends_on) and the command reaches the api.
		if d, err = run(cilo("run", "-e", name, "--", "curl", "-fsS", "--retry", "50", "--retry-delay", "0", "--retry-connrefused", "http://localhost:8080/count")); err != nil {
			return nil, err
		}
		firsts = append(firsts, d)
		if _, err := run(cilo("destroy", "--force", name)); err != nil {
			return nil, err
		}
		env.Logf("cilo round %d: up %s, down %s, run to first response %s", i, ups[i], downs[i], firsts[i])
	}

	pupsd, pdowns, err := podmanCompose(ctx, env, root, project, archives, n)
	if err != nil {
		return nil, err
	}
	up, pup := percentile(ups, 50), percentile(pupsd, 50)
	down, pdown := percentile(downs, 50), percentile(pdowns, 50)
	return []Row{
		{Metric: "up of the example stack (4 services), median of 3", Unit: "ms", Cilo: ms(up),
			AnchorName: "podman-compose up -d", Anchor: ms(pup), Goal: "ratio <= 0.25", Met: ms(up) <= 0.25*ms(pup)},
		{Metric: "down of the example stack, median of 3", Unit: "ms", Cilo: ms(down),
			AnchorName: "podman-compose down", Anchor: ms(pdown), Goal: "ratio <= 1", Met: down <= pdown},
		{Metric: "cilo run: time to first api response (services down before), median of 3", Unit: "ms",
			Cilo: ms(percentile(firsts, 50)), Goal: "informational", Met: true},
	}, nil
}

// podmanCompose times podman-compose up -d and down of the same compose
// file with the same images loaded into podman. The file is the example's
// with build: sections replaced by the loaded image names (podman-compose
// would otherwise try to build) and without ports: (so the anchor binds
// nothing on the host).
func podmanCompose(ctx context.Context, env *Env, root, project string, archives []string, n int) (ups, downs []time.Duration, err error) {
	if err := ensurePodmanUlimits(); err != nil {
		return nil, nil, err
	}
	for _, a := range archives {
		if b, err := exec.CommandContext(ctx, "podman", "load", "-i", a).CombinedOutput(); err != nil {
			return nil, nil, fmt.Errorf("podman load %s: %w: %s", a, err, b)
		}
	}
	defer func() {
		for _, s := range strings.Fields(composeServices) {
			exec.Command("podman", "rmi", "-f", "counter-"+s).Run()
		}
	}()
	b, err := os.ReadFile(filepath.Join(project, "compose.yaml"))
	if err != nil {
		return nil, nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, nil, err
	}
	for name, s := range doc["services"].(map[string]any) {
		svc := s.(map[string]any)
		delete(svc, "build")
		delete(svc, "ports")
		// podman load keeps the archive's name, docker.io/library/...
		svc["image"] = "docker.io/library/counter-" + name + ":latest"
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return nil, nil, err
	}
	file := filepath.Join(root, "podman-compose.yaml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		return nil, nil, err
	}
	// Project names are new in every run: netavark names a network's
	// firewall chains after the network, and a run killed halfway leaves
	// chains behind that would make the next run's containers fail with
	// "Chain already exists".
	run := fmt.Sprintf("%04x", rand.Uint32()&0xffff)
	for i := 0; i < n; i++ {
		p := fmt.Sprintf("cilobench%s%d", run, i)
		clean := func() {
			exec.Command("podman-compose", "-f", file, "-p", p, "down").Run()
			exec.Command("podman", "volume", "rm", "-f", p+"_kvdata").Run()
			exec.Command("podman", "network", "rm", "-f", p+"_default").Run()
		}
		up, err := timeCmd(ctx, 1, "podman-compose", "-f", file, "-p", p, "up", "-d")
		if err != nil {
			clean()
			return nil, nil, err
		}
		// podman-compose exits 0 even when a container fails: check that
		// the stack really runs (kv, api, web up; migrate done).
		out, err := exec.CommandContext(ctx, "podman", "ps", "--filter", "label=io.podman.compose.project="+p, "--format", "{{.Names}}").Output()
		if err != nil || strings.Count(string(out), "\n") < 3 {
			clean()
			return nil, nil, fmt.Errorf("podman-compose up left %q running (want kv, api, web): %v", out, err)
		}
		down, err := timeCmd(ctx, 1, "podman-compose", "-f", file, "-p", p, "down")
		clean()
		if err != nil {
			return nil, nil, err
		}
		ups, downs = append(ups, up[0]), append(downs, down[0])
		env.Logf("podman-compose round %d: up %s, down %s", i, up[0], down[0])
	}
	return ups, downs, nil
}

// ensurePodmanUlimits sets default_ulimits in containers.conf unless it is
// set already: raising rlimits is refused on these machines.
func ensurePodmanUlimits() error {
	const path = "/etc/containers/containers.conf"
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	if strings.Contains(string(b), "default_ulimits") {
		return nil
	}
	s := string(b)
	line := "default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n"
	if i := strings.Index(s, "[containers]\n"); i >= 0 {
		s = s[:i+len("[containers]\n")] + line + s[i+len("[containers]\n"):]
	} else {
		s += "\n[containers]\n" + line
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
