package parsed_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	yaml "go.yaml.in/yaml/v4"

	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/config/parsed"
)

// keep is how cilo-core reads config files; c.Decode is how the front does.
func keep(c parsed.Cache) config.Decoder {
	return func(file string, b []byte, v any) error { return c.DecodeAndKeep(file, b, v, yaml.Unmarshal) }
}

// TestFrontSeesWhatCoreDecoded: for every kind of config file, the front
// gets nothing before cilo-core has read the file, then exactly what
// cilo-core got; an edit is a miss again.
func TestFrontSeesWhatCoreDecoded(t *testing.T) {
	tests := []struct {
		name    string
		global  string // /etc/cilo/config.yml
		project string // .cilo/config.yml ("" for none)
	}{
		{"none", "", ""},
		{"global_only", "pool: 10.50.0.0/16\nprefix: abc\nstate_dir: /srv/cilo\n", ""},
		{"project_only", "", "project: Shop API\ncompose_files: [compose.yaml, more.yml]\nworkspace:\n  exclude: ['*.log', node_modules]\n"},
		{"both", "dns_suffix: dev.local\nrun_dir: /srv/run\n", "env_files: [.env]\n"},
		{"comments_only", "# nothing\n", "# nothing either\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cache := parsed.New(filepath.Join(dir, "parsed"))
			globalFile := filepath.Join(dir, "config.yml")
			write(t, globalFile, tt.global)
			src := filepath.Join(dir, "src")
			if tt.project != "" {
				write(t, filepath.Join(src, ".cilo", "config.yml"), tt.project)
			} else if err := os.MkdirAll(filepath.Join(src, ".git"), 0o755); err != nil {
				t.Fatal(err)
			}
			getenv := func(k string) string { return map[string]string{"CILO_CONFIG": globalFile}[k] }

			// An empty file has nothing to decode, so nothing to miss.
			if _, err := config.Load(getenv, cache.Decode); errors.Is(err, parsed.ErrMiss) != (tt.global != "") {
				t.Fatalf("front before core, config file %q: %v", tt.global, err)
			}
			if _, err := config.FindProject(src, cache.Decode); errors.Is(err, parsed.ErrMiss) != (tt.project != "") {
				t.Fatalf("front before core, project file %q: %v", tt.project, err)
			}
			coreCfg, err := config.Load(getenv, keep(cache))
			if err != nil {
				t.Fatal(err)
			}
			coreProj, err := config.FindProject(src, keep(cache))
			if err != nil {
				t.Fatal(err)
			}
			frontCfg, err := config.Load(getenv, cache.Decode)
			if err != nil {
				t.Fatalf("front after core: %v", err)
			}
			frontProj, err := config.FindProject(src, cache.Decode)
			if err != nil {
				t.Fatalf("front after core: %v", err)
			}
			if frontCfg != coreCfg {
				t.Errorf("config: front %+v, core %+v", frontCfg, coreCfg)
			}
			if !reflect.DeepEqual(frontProj, coreProj) {
				t.Errorf("project: front %+v, core %+v", frontProj, coreProj)
			}

			write(t, globalFile, tt.global+"# edited\n")
			if _, err := config.Load(getenv, cache.Decode); !errors.Is(err, parsed.ErrMiss) {
				t.Fatalf("front after an edit: %v, want a miss", err)
			}
			// Keeping the edited file's entry drops its old one.
			if _, err := config.Load(getenv, keep(cache)); err != nil {
				t.Fatal(err)
			}
			want := 1
			if tt.project != "" {
				want = 2
			}
			if entries, _ := filepath.Glob(filepath.Join(dir, "parsed", "*.json")); len(entries) != want {
				t.Fatalf("%d entries kept, want %d: %v", len(entries), want, entries)
			}
		})
	}
}

// TestEntryMustMatch: a kept entry is used only for the same file, bytes,
// type and defaults; a damaged or colliding entry is a miss.
func TestEntryMustMatch(t *testing.T) {
	type conf struct{ A, B string }
	dir := t.TempDir()
	cache := parsed.New(dir)
	src := []byte("a: x\n")
	v := conf{B: "default"}
	if err := cache.DecodeAndKeep("/f.yml", src, &v, yaml.Unmarshal); err != nil {
		t.Fatal(err)
	}
	if v != (conf{A: "x", B: "default"}) {
		t.Fatalf("decoded %+v", v)
	}
	misses := []struct {
		name string
		file string
		b    []byte
		v    any
	}{
		{"other_file", "/g.yml", src, &conf{B: "default"}},
		{"other_bytes", "/f.yml", []byte("a: y\n"), &conf{B: "default"}},
		{"other_defaults", "/f.yml", src, &conf{B: "changed"}},
		{"other_type", "/f.yml", src, &struct{ A, B string }{B: "default"}},
	}
	for _, m := range misses {
		if err := cache.Decode(m.file, m.b, m.v); !errors.Is(err, parsed.ErrMiss) {
			t.Errorf("%s: %v, want a miss", m.name, err)
		}
	}
	got := conf{B: "default"}
	if err := cache.Decode("/f.yml", src, &got); err != nil || got != v {
		t.Fatalf("hit: %+v, %v", got, err)
	}

	entries, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(entries) != 1 {
		t.Fatalf("entries: %v", entries)
	}
	for _, damage := range []string{"", "{", `{"format":1,"file":"/f.yml","source":"a: z\n","value":{"A":"z"}}`} {
		write(t, entries[0], damage)
		if err := cache.Decode("/f.yml", src, &conf{B: "default"}); !errors.Is(err, parsed.ErrMiss) {
			t.Errorf("entry %q: %v, want a miss", damage, err)
		}
	}
}

// TestKeepIsBestEffort: a cache that cannot be written never costs the
// caller its config, and a file that does not decode keeps nothing.
func TestKeepIsBestEffort(t *testing.T) {
	dir := t.TempDir()
	blocked := filepath.Join(dir, "file")
	write(t, blocked, "")
	var v struct{ A string }
	if err := parsed.New(filepath.Join(blocked, "sub")).DecodeAndKeep("/f.yml", []byte("a: x\n"), &v, yaml.Unmarshal); err != nil || v.A != "x" {
		t.Fatalf("unwritable cache: %+v, %v", v, err)
	}
	cache := parsed.New(filepath.Join(dir, "c"))
	if err := cache.DecodeAndKeep("/f.yml", []byte("a: [\n"), &v, yaml.Unmarshal); err == nil {
		t.Fatal("bad YAML decoded")
	}
	if _, err := os.Stat(filepath.Join(dir, "c")); !os.IsNotExist(err) {
		t.Fatalf("bad YAML left a cache: %v", err)
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
