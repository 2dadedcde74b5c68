package compose

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/cilo-dev/cilo/nsnet"
	"github.com/cilo-dev/cilo/sandbox/state"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, data := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name         string
		files        map[string]string
		composeFiles []string
		envFiles     []string
		osEnv        []string
		wantProject  string
		wantServices string // sorted, space separated
		check        func(t *testing.T, dir string, env map[string]map[string]string)
		wantErr      string
	}{
		{
			name:         "default_file_and_cilo_project_name",
			files:        map[string]string{"compose.yaml": "services:\n  db:\n    image: x\n"},
			wantProject:  "myapp",
			wantServices: "db",
		},
		{
			name:         "docker_compose_yml_with_override",
			files:        map[string]string{"docker-compose.yml": "services:\n  db:\n    image: x\n", "docker-compose.override.yml": "services:\n  web:\n    image: y\n"},
			wantProject:  "myapp",
			wantServices: "db web",
		},
		{
			name:         "name_in_file_wins",
			files:        map[string]string{"compose.yml": "name: shop\nservices:\n  db:\n    image: x\n"},
			wantProject:  "shop",
			wantServices: "db",
		},
		{
			name:         "compose_project_name_from_environment",
			files:        map[string]string{"compose.yaml": "services:\n  db:\n    image: x\n"},
			osEnv:        []string{"COMPOSE_PROJECT_NAME=other"},
			wantProject:  "other",
			wantServices: "db",
		},
		{
			name:         "config_compose_files_in_order",
			files:        map[string]string{"a.yml": "services:\n  db:\n    image: x\n    environment: {K: a}\n", "b.yml": "services:\n  db:\n    environment: {K: b}\n"},
			composeFiles: []string{"a.yml", "b.yml"},
			wantProject:  "myapp",
			wantServices: "db",
			check: func(t *testing.T, dir string, env map[string]map[string]string) {
				if env["db"]["K"] != "b" {
					t.Errorf("K = %q, want the later file's b", env["db"]["K"])
				}
			},
		},
		{
			name:         "compose_file_variable",
			files:        map[string]string{"x.yml": "services:\n  one:\n    image: x\n", "y.yml": "services:\n  two:\n    image: x\n"},
			osEnv:        []string{"COMPOSE_FILE=x.yml:y.yml"},
			wantProject:  "myapp",
			wantServices: "one two",
		},
		{
			name:         "dotenv_interpolation_and_env_file",
			files:        map[string]string{".env": "TAG=7\n", "svc.env": "FROM_FILE=yes\n", "compose.yaml": "services:\n  db:\n    image: x:${TAG}\n    env_file: svc.env\n    environment: {T: \"${TAG}\"}\n"},
			wantProject:  "myapp",
			wantServices: "db",
			check: func(t *testing.T, dir string, env map[string]map[string]string) {
				if env["db"]["T"] != "7" || env["db"]["FROM_FILE"] != "yes" {
					t.Errorf("environment = %v", env["db"])
				}
			},
		},
		{
			name:         "config_env_files",
			files:        map[string]string{"ci.env": "TAG=9\n", ".env": "TAG=1\n", "compose.yaml": "services:\n  db:\n    image: x\n    environment: {T: \"${TAG}\"}\n"},
			envFiles:     []string{"ci.env"},
			wantProject:  "myapp",
			wantServices: "db",
			check: func(t *testing.T, dir string, env map[string]map[string]string) {
				if env["db"]["T"] != "9" {
					t.Errorf("T = %q, want 9 from ci.env", env["db"]["T"])
				}
			},
		},
		{
			name:         "profiles_from_compose_profiles",
			files:        map[string]string{"compose.yaml": "services:\n  db:\n    image: x\n  debug:\n    image: x\n    profiles: [dev]\n  tools:\n    image: x\n    profiles: [tools]\n"},
			osEnv:        []string{"COMPOSE_PROFILES=dev"},
			wantProject:  "myapp",
			wantServices: "db debug",
		},
		{
			name:         "relative_bind_mount_in_workspace",
			files:        map[string]string{"compose.yaml": "services:\n  db:\n    image: x\n    volumes: [\"./data:/data\"]\n"},
			wantProject:  "myapp",
			wantServices: "db",
		},
		{
			name:    "invalid_yaml_names_file_and_line",
			files:   map[string]string{"compose.yaml": "services:\n  db:\n    image: [\n"},
			wantErr: "compose.yaml: yaml: while parsing a flow node at line 3",
		},
		{
			name:         "missing_configured_file",
			files:        map[string]string{"compose.yaml": "services: {}\n"},
			composeFiles: []string{"nope.yml"},
			wantErr:      "nope.yml",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, tt.files)
			env := &state.Env{Project: "myapp", Name: "e1", Workspace: dir, ComposeFiles: tt.composeFiles, EnvFiles: tt.envFiles}
			p, err := Load(context.Background(), env, tt.osEnv)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != tt.wantProject {
				t.Errorf("project = %q, want %q", p.Name, tt.wantProject)
			}
			names := p.ServiceNames()
			sort.Strings(names)
			if got := strings.Join(names, " "); got != tt.wantServices {
				t.Errorf("services = %q, want %q", got, tt.wantServices)
			}
			envs := map[string]map[string]string{}
			for n, s := range p.Services {
				envs[n] = map[string]string{}
				for k, v := range s.Environment {
					if v != nil {
						envs[n][k] = *v
					}
				}
				for _, v := range s.Volumes {
					if v.Type == "bind" && !strings.HasPrefix(v.Source, dir) {
						t.Errorf("bind source %s is outside the workspace %s", v.Source, dir)
					}
				}
			}
			if tt.check != nil {
				tt.check(t, dir, envs)
			}
		})
	}
}

func TestLoadNoComposeFile(t *testing.T) {
	env := &state.Env{Project: "p", Name: "e", Workspace: t.TempDir()}
	if HasComposeFile(env, nil) {
		t.Fatal("HasComposeFile = true in an empty workspace")
	}
	if _, err := Load(context.Background(), env, nil); !errors.Is(err, ErrNoComposeFile) {
		t.Fatalf("err = %v, want ErrNoComposeFile", err)
	}
}

func TestWarnings(t *testing.T) {
	dir := writeFiles(t, map[string]string{"compose.yaml": `
services:
  db:
    image: x
    privileged: true
    cap_add: [NET_ADMIN]
    deploy:
      replicas: 1
      placement: {constraints: ["node.role==manager"]}
      resources:
        limits: {memory: 64m}
        reservations: {memory: 32m}
    networks: [back]
  web:
    image: y
    ports: ["80:80"]
networks:
  back: {}
secrets:
  s: {file: ./s.txt}
`})
	p, err := Load(context.Background(), &state.Env{Project: "p", Name: "e", Workspace: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(Warnings(p), "\n")
	for _, want := range []string{
		`service "db": "privileged" is not supported`,
		`service "db": "cap_add" is not supported`,
		`service "db": "deploy.placement" is not supported`,
		`service "db": "deploy.resources.reservations" is not supported`,
		`service "db": network "back"`,
		`top-level "secrets"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, `service "web"`) {
		t.Errorf("warned about web, which uses only supported fields:\n%s", got)
	}
}

func TestPlan(t *testing.T) {
	pool, _ := nsnet.NewPool(netip.MustParsePrefix("10.224.0.0/16"))
	tests := []struct {
		name    string
		compose string
		addrs   string // service=addr ... in order
		fwds    int
		wantErr string
	}{
		{"sorted_stable_addresses", "services:\n  web: {image: x}\n  api: {image: x, ports: [\"8080:80\"]}\n  db: {image: x, deploy: {replicas: 2}}\n",
			"api=10.224.3.10 db=10.224.3.11 db=10.224.3.12 web=10.224.3.13", 1, ""},
		{"port_twice", "services:\n  a: {image: x, ports: [\"80:80\"]}\n  b: {image: x, ports: [\"80:81\"]}\n", "", 0, "published twice"},
		{"tcp_and_udp_same_port", "services:\n  a: {image: x, ports: [\"53:53/udp\"]}\n  b: {image: x, ports: [\"53:53\"]}\n", "a=10.224.3.10 b=10.224.3.11", 2, ""},
		{"published_with_replicas", "services:\n  a: {image: x, ports: [\"80:80\"], deploy: {replicas: 2}}\n", "", 0, "2 replicas"},
		{"unpublished_port_forwards_nothing", "services:\n  a: {image: x, ports: [\"80\"]}\n", "a=10.224.3.10", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"compose.yaml": tt.compose})
			env := &state.Env{Project: "p", Name: "e", Index: 3, Workspace: dir, Gateway: pool.Host(3, 1)}
			p, err := Load(context.Background(), env, nil)
			if err != nil {
				t.Fatal(err)
			}
			pl, err := makePlan(p, env, pool, "cilo", "test")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if !errors.Is(err, nsnet.ErrPortConflict) {
					t.Errorf("err %v does not wrap ErrPortConflict", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range pl.services {
				for _, a := range s.Addrs {
					got = append(got, s.Name+"="+a.String())
				}
			}
			if strings.Join(got, " ") != tt.addrs {
				t.Errorf("addrs = %v, want %s", got, tt.addrs)
			}
			if len(pl.forwards) != tt.fwds {
				t.Errorf("forwards = %v, want %d", pl.forwards, tt.fwds)
			}
		})
	}
}

func TestNames(t *testing.T) {
	long := strings.Repeat("x", 300)
	tests := []struct {
		name, project, env, service string
	}{
		{"short", "app", "dev", "db"},
		{"long_everything", long, long, long},
		{"odd_characters", "my app", "e/1", "db:main"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkNames(t, tt.project, tt.env, tt.service, 1)
		})
	}
}

func checkNames(t *testing.T, project, env, service string, n int) {
	id := containerID(project, env, service, n)
	if len(id) > 76 || !validID(id) {
		t.Fatalf("container id %q is not valid for containerd", id)
	}
	ns := netnsName("cilo", project, env, service, n)
	if len(ns) > 200 || !validID(ns) {
		t.Fatalf("netns name %q is not a safe file name", ns)
	}
	if containerID(project, env, service, n) != id {
		t.Fatal("container id is not stable")
	}
	if other := containerID(project+"x", env, service, n); other == id {
		t.Fatalf("projects %q and %q share container id %q", project, project+"x", id)
	}
}

// validID is containerd's identifier rule.
var validID = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`).MatchString

func FuzzNames(f *testing.F) {
	f.Add("app", "dev", "db", 1)
	f.Add(strings.Repeat("p", 100), "é", "_", 12)
	f.Fuzz(func(t *testing.T, project, env, service string, n int) {
		if project == "" || env == "" || service == "" {
			return
		}
		// Replica numbers count from 1.
		checkNames(t, project, env, service, int(uint(n)%1000)+1)
	})
}

// TestRestartOf: restart: wins; else deploy.restart_policy maps as docker
// compose maps it.
func TestRestartOf(t *testing.T) {
	tests := []struct {
		name, service, want string
	}{
		{"restart", "{image: x, restart: unless-stopped}", "unless-stopped"},
		{"restart_wins", "{image: x, restart: \"no\", deploy: {restart_policy: {condition: any}}}", "no"},
		{"any", "{image: x, deploy: {restart_policy: {condition: any}}}", "always"},
		{"default_condition", "{image: x, deploy: {restart_policy: {max_attempts: 3}}}", "always"},
		{"none", "{image: x, deploy: {restart_policy: {condition: none}}}", "no"},
		{"on_failure", "{image: x, deploy: {restart_policy: {condition: on-failure}}}", "on-failure"},
		{"on_failure_max", "{image: x, deploy: {restart_policy: {condition: on-failure, max_attempts: 2}}}", "on-failure:2"},
		{"nothing", "{image: x}", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"compose.yaml": "services:\n  a: " + tt.service + "\n"})
			p, err := Load(context.Background(), &state.Env{Project: "p", Name: "e", Workspace: dir}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := restartOf(p.Services["a"]); got != tt.want {
				t.Errorf("restartOf = %q, want %q", got, tt.want)
			}
		})
	}
}
