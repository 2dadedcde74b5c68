package main

import (
	"slices"
	"testing"
)

func TestParseRun(t *testing.T) {
	tests := []struct {
		args []string
		env  string
		argv []string
		ok   bool
	}{
		{[]string{"run", "true", "dev"}, "dev", []string{"true"}, true},
		{[]string{"run", "sh", "dev", "-c", "exit 7"}, "dev", []string{"sh", "-c", "exit 7"}, true},
		{[]string{"run", "go", "dev", "--", "test"}, "dev", []string{"go", "--", "test"}, true},
		{[]string{"run", "-e", "dev", "--", "npm", "run", "dev"}, "dev", []string{"npm", "run", "dev"}, true},
		{[]string{"run", "--env", "dev", "--", "ls", "-l"}, "dev", []string{"ls", "-l"}, true},
		// cilo-core's to parse: other commands, flags, the branch form.
		{[]string{"list"}, "", nil, false},
		{[]string{"run", "true"}, "", nil, false},
		{[]string{"run", "--", "true"}, "", nil, false},
		{[]string{"run", "--rm", "-e", "dev", "--", "true"}, "", nil, false},
		{[]string{"run", "-e", "dev", "--rm", "--", "true"}, "", nil, false},
		{[]string{"run", "-e", "dev", "--"}, "", nil, false},
		{[]string{"run", "-e=dev", "--", "true"}, "", nil, false},
		{[]string{"run", "-f", "x.yml", "-e", "dev", "--", "true"}, "", nil, false},
		{[]string{"--state-dir", "/x", "run", "true", "dev"}, "", nil, false},
		{[]string{"run", "--help", "dev"}, "", nil, false},
	}
	for _, tt := range tests {
		env, argv, ok := parseRun(tt.args)
		if env != tt.env || !slices.Equal(argv, tt.argv) || ok != tt.ok {
			t.Errorf("parseRun(%q) = %q, %q, %v; want %q, %q, %v", tt.args, env, argv, ok, tt.env, tt.argv, tt.ok)
		}
	}
}

// FuzzParseRun: whatever the arguments, a run the front takes has a
// command, and every word of it came from the command line in order.
func FuzzParseRun(f *testing.F) {
	f.Add("run", "sh", "dev", "-c")
	f.Add("run", "-e", "dev", "--")
	f.Fuzz(func(t *testing.T, a, b, c, d string) {
		args := []string{a, b, c, d, "x"}
		env, argv, ok := parseRun(args)
		if !ok {
			return
		}
		if len(argv) == 0 {
			t.Fatalf("parseRun(%q) took a run without a command", args)
		}
		if !slices.Contains(args, env) {
			t.Fatalf("parseRun(%q): env %q is not an argument", args, env)
		}
		if argv[len(argv)-1] != "x" {
			t.Fatalf("parseRun(%q) dropped the command's last argument: %q", args, argv)
		}
	})
}
