package supervise

import (
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name, in string
		want     Policy
		wantErr  bool
	}{
		{"empty_is_no", "", Policy{Mode: No}, false},
		{"no", "no", Policy{Mode: No}, false},
		{"always", "always", Policy{Mode: Always}, false},
		{"unless_stopped", "unless-stopped", Policy{Mode: UnlessStopped}, false},
		{"on_failure", "on-failure", Policy{Mode: OnFailure}, false},
		{"on_failure_limit", "on-failure:2", Policy{Mode: OnFailure, MaxRetries: 2}, false},
		{"on_failure_zero_is_unlimited", "on-failure:0", Policy{Mode: OnFailure}, false},
		{"negative_limit", "on-failure:-1", Policy{}, true},
		{"limit_not_a_number", "on-failure:x", Policy{}, true},
		{"limit_on_always", "always:3", Policy{}, true},
		{"limit_without_name", ":3", Policy{}, true},
		{"unknown", "sometimes", Policy{}, true},
		{"docker_swarm_condition", "any", Policy{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePolicy(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParsePolicy(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("ParsePolicy(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if err == nil && tt.in != "" && tt.in != "on-failure:0" && got.String() != tt.in {
				t.Fatalf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name      string
		labels    map[string]string
		exit      uint32
		want      bool
		wantCount string
	}{
		{"no_policy_label", map[string]string{}, 1, false, ""},
		{"no", map[string]string{LabelPolicy: "no"}, 1, false, ""},
		{"always_after_success", map[string]string{LabelPolicy: "always"}, 0, true, "1"},
		{"always_after_failure", map[string]string{LabelPolicy: "always", LabelCount: "4"}, 3, true, "5"},
		{"unless_stopped_after_success", map[string]string{LabelPolicy: "unless-stopped"}, 0, true, "1"},
		{"unless_stopped_after_failure", map[string]string{LabelPolicy: "unless-stopped"}, 137, true, "1"},
		{"on_failure_after_failure", map[string]string{LabelPolicy: "on-failure"}, 3, true, "1"},
		{"on_failure_after_success", map[string]string{LabelPolicy: "on-failure"}, 0, false, ""},
		{"on_failure_unlimited", map[string]string{LabelPolicy: "on-failure", LabelCount: "100"}, 1, true, "101"},
		{"on_failure_under_limit", map[string]string{LabelPolicy: "on-failure:2", LabelCount: "1"}, 1, true, "2"},
		{"on_failure_at_limit", map[string]string{LabelPolicy: "on-failure:2", LabelCount: "2"}, 1, false, ""},
		{"emptied_count_reads_zero", map[string]string{LabelPolicy: "on-failure:1", LabelCount: ""}, 1, true, "1"},
		{"always_stopped_by_user", map[string]string{LabelPolicy: "always", LabelStopped: "true"}, 0, false, ""},
		{"unless_stopped_stopped_by_user", map[string]string{LabelPolicy: "unless-stopped", LabelStopped: "true"}, 0, false, ""},
		{"on_failure_stopped_by_user", map[string]string{LabelPolicy: "on-failure", LabelStopped: "true"}, 143, false, ""},
		{"emptied_stop_mark", map[string]string{LabelPolicy: "always", LabelStopped: ""}, 0, true, "1"},
		{"unreadable_policy", map[string]string{LabelPolicy: "sometimes"}, 1, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, ok := decide(tt.labels, tt.exit)
			if ok != tt.want {
				t.Fatalf("decide(%v, %d) = %v, want %v", tt.labels, tt.exit, ok, tt.want)
			}
			if set[LabelCount] != tt.wantCount {
				t.Fatalf("decide(%v, %d) sets count %q, want %q", tt.labels, tt.exit, set[LabelCount], tt.wantCount)
			}
		})
	}
}

func TestBackoffNext(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Reset: 10 * time.Second}
	tests := []struct {
		name      string
		prev, ran time.Duration
		want      time.Duration
	}{
		{"first_exit", 0, time.Millisecond, 100 * time.Millisecond},
		{"first_exit_after_long_run", 0, time.Hour, 100 * time.Millisecond},
		{"doubles", 100 * time.Millisecond, time.Second, 200 * time.Millisecond},
		{"doubles_again", 400 * time.Millisecond, time.Second, 800 * time.Millisecond},
		{"capped", 800 * time.Millisecond, time.Second, time.Second},
		{"stays_capped", time.Second, 0, time.Second},
		{"reset_after_long_run", time.Second, 10 * time.Second, 100 * time.Millisecond},
		{"just_under_reset", 200 * time.Millisecond, 10*time.Second - 1, 400 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := b.Next(tt.prev, tt.ran); got != tt.want {
				t.Fatalf("Next(%v, %v) = %v, want %v", tt.prev, tt.ran, got, tt.want)
			}
		})
	}
}

// TestDockerBackoffSequence checks the delays of a crash loop with the
// default backoff: docker's 100 ms, doubling, a minute at most.
func TestDockerBackoffSequence(t *testing.T) {
	b := dockerBackoff()
	var got []time.Duration
	var d time.Duration
	for range 12 {
		d = b.Next(d, time.Second)
		got = append(got, d)
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delay %d = %v, want %v (all: %v)", i+1, got[i], want[i]*time.Millisecond, got)
		}
	}
}

func TestSupervised(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		want   bool
	}{
		{"no_label", map[string]string{}, false},
		{"no", map[string]string{LabelPolicy: "no"}, false},
		{"always", map[string]string{LabelPolicy: "always"}, true},
		{"on_failure_exhausted_still_watched", map[string]string{LabelPolicy: "on-failure:1", LabelCount: "1"}, true},
		{"stopped_by_user", map[string]string{LabelPolicy: "unless-stopped", LabelStopped: "true"}, false},
		{"unreadable_policy", map[string]string{LabelPolicy: "sometimes"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := supervised(tt.labels); got != tt.want {
				t.Fatalf("supervised(%v) = %v, want %v", tt.labels, got, tt.want)
			}
		})
	}
}
