package files

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilo-dev/cilo/sandbox/state"
)

func TestFind(t *testing.T) {
	tests := []struct {
		name    string
		present []string
		named   []string
		osEnv   []string
		want    []string
		err     bool
	}{
		{"none", nil, nil, nil, nil, false},
		{"default_preference", []string{"docker-compose.yml", "compose.yaml"}, nil, nil, []string{"compose.yaml"}, false},
		{"with_override", []string{"compose.yml", "compose.override.yml"}, nil, nil, []string{"compose.yml", "compose.override.yml"}, false},
		{"config_files", []string{"a.yml", "b.yml", "compose.yaml"}, []string{"a.yml", "b.yml"}, nil, []string{"a.yml", "b.yml"}, false},
		{"config_file_missing", nil, []string{"nope.yml"}, nil, nil, true},
		{"compose_file_env", []string{"x.yml", "y.yml"}, nil, []string{"COMPOSE_FILE=x.yml:y.yml"}, []string{"x.yml", "y.yml"}, false},
		{"compose_file_separator", []string{"x.yml", "y.yml"}, nil, []string{"COMPOSE_FILE=x.yml,y.yml", "COMPOSE_PATH_SEPARATOR=,"}, []string{"x.yml", "y.yml"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.present {
				os.WriteFile(filepath.Join(dir, f), []byte("services: {}\n"), 0o644)
			}
			env := &state.Env{Name: "e", Workspace: dir, ComposeFiles: tt.named}
			got, err := Find(env, tt.osEnv)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("Find = %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != filepath.Join(dir, tt.want[i]) {
					t.Fatalf("Find = %v, want %v", got, tt.want)
				}
			}
			if Has(env, tt.osEnv) != (len(tt.want) > 0 || tt.err) {
				t.Fatalf("Has disagrees with Find")
			}
		})
	}
}
