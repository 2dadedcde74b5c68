package config

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateEnvName(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"simple", "agent-1", true},
		{"digits", "42", true},
		{"single_char", "a", true},
		{"max_length", strings.Repeat("a", 63), true},
		{"too_long", strings.Repeat("a", 64), false},
		{"empty", "", false},
		{"uppercase", "Agent", false},
		{"leading_dash", "-a", false},
		{"trailing_dash", "a-", false},
		{"dot", "a.b", false},
		{"path_traversal", "../x", false},
		{"slash", "a/b", false},
		{"unicode", "agént", false},
		{"space", "a b", false},
		{"nul", "a\x00b", false},
		{"underscore", "a_b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateEnvName(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateEnvName(%q) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidName) {
				t.Fatalf("error %v does not wrap ErrInvalidName", err)
			}
		})
	}
}

func TestNormalizeProject(t *testing.T) {
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{"plain", "myapp", "myapp", true},
		{"mixed_case", "MyApp", "myapp", true},
		{"underscores_and_dots", "my_app.v2", "my-app-v2", true},
		{"leading_junk", "__app", "app", true},
		{"unicode_dropped", "café-app", "caf-app", true},
		{"only_symbols", "___", "", false},
		{"long", strings.Repeat("ab", 40), strings.Repeat("ab", 31) + "a", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeProject(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("NormalizeProject(%q) = %q, %v; want %q ok=%v", tt.in, got, err, tt.want, tt.ok)
			}
		})
	}
}

func FuzzValidateEnvName(f *testing.F) {
	for _, s := range []string{"agent-1", "", "../x", "a.b", strings.Repeat("a", 64), "agént"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateEnvName(s) != nil {
			return
		}
		// Anything accepted must be safe as a path element and a DNS label.
		if len(s) == 0 || len(s) > 63 || strings.ContainsAny(s, "/.\x00 ") || s[0] == '-' {
			t.Fatalf("accepted unsafe name %q", s)
		}
	})
}

func FuzzNormalizeProject(f *testing.F) {
	for _, s := range []string{"MyApp", "___", "café", strings.Repeat("x", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := NormalizeProject(s)
		if err != nil {
			return
		}
		if err := ValidateEnvName(got); err != nil {
			t.Fatalf("NormalizeProject(%q) = %q, not a valid label: %v", s, got, err)
		}
	})
}
