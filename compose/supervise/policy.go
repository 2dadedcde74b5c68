package supervise

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Labels on compose containers that the supervisor reads. The compose
// engine sets them; nothing else restarts a container carrying them.
const (
	// LabelPolicy is the service's restart policy as compose writes it
	// ("always", "on-failure:3"); absent on containers never restarted.
	LabelPolicy = "cilo.restart-policy"
	// LabelCount is how often the supervisor restarted the task since
	// cilo up last started it; `cilo ps` shows it.
	LabelCount = "cilo.restart-count"
	// LabelStopped is set by cilo down and destroy before they stop the
	// task: the user stopped the container and no policy revives it.
	LabelStopped = "cilo.stopped-by-user"
)

// Mode is a restart policy without its retry limit.
type Mode string

// The restart policies of compose (and docker run --restart).
const (
	No            Mode = "no"
	Always        Mode = "always"
	OnFailure     Mode = "on-failure"
	UnlessStopped Mode = "unless-stopped"
)

// Policy is a service's restart policy.
type Policy struct {
	Mode Mode
	// MaxRetries limits the restarts of on-failure; 0 means no limit,
	// as in docker.
	MaxRetries int
}

// ParsePolicy reads compose's restart: value, with docker's rules: an
// empty value is "no", and only on-failure takes a retry limit.
func ParsePolicy(s string) (Policy, error) {
	name, n, hasN := strings.Cut(s, ":")
	p := Policy{Mode: Mode(name)}
	switch p.Mode {
	case "":
		if hasN {
			return Policy{}, fmt.Errorf("restart policy %q: a retry limit needs on-failure (on-failure:N)", s)
		}
		return Policy{Mode: No}, nil
	case No, Always, UnlessStopped:
		if hasN {
			return Policy{}, fmt.Errorf("restart policy %q: only on-failure takes a retry limit", s)
		}
		return p, nil
	case OnFailure:
		if !hasN {
			return p, nil
		}
		max, err := strconv.Atoi(n)
		if err != nil || max < 0 {
			return Policy{}, fmt.Errorf("restart policy %q: the retry limit must be a number of 0 or more", s)
		}
		p.MaxRetries = max
		return p, nil
	}
	return Policy{}, fmt.Errorf("restart policy %q is not one of no, always, on-failure[:N], unless-stopped", s)
}

// String is the policy as compose writes it.
func (p Policy) String() string {
	if p.Mode == OnFailure && p.MaxRetries > 0 {
		return fmt.Sprintf("%s:%d", p.Mode, p.MaxRetries)
	}
	return string(p.Mode)
}

// Restart reports whether a task that exited with exitStatus, after the
// supervisor restarted it restarts times, is to be started again. A
// container the user stopped (cilo down, destroy) never is, whatever its
// policy: cilo's stop also removes the container, so the case where
// docker tells always from unless-stopped (a stopped always container
// comes back when the daemon starts) does not arise, and reviving what
// the user is taking down would be a race, not a policy.
func (p Policy) Restart(exitStatus uint32, restarts int, stoppedByUser bool) bool {
	if stoppedByUser {
		return false
	}
	switch p.Mode {
	case Always, UnlessStopped:
		return true
	case OnFailure:
		return exitStatus != 0 && (p.MaxRetries == 0 || restarts < p.MaxRetries)
	}
	return false
}

// Restarts is the restart count recorded in a container's labels.
func Restarts(labels map[string]string) int {
	n, _ := strconv.Atoi(labels[LabelCount])
	return n
}

// StoppedByUser reports whether cilo down or destroy marked the container.
func StoppedByUser(labels map[string]string) bool { return labels[LabelStopped] != "" }

// StartedLabels are what cilo up sets when it starts a container's task
// itself: no restarts counted and not stopped by the user, as docker
// resets both on a manual start. containerd keeps an emptied label as an
// empty value, which reads as unset.
func StartedLabels() map[string]string { return map[string]string{LabelCount: "", LabelStopped: ""} }

// StoppedLabels mark a container as stopped by the user.
func StoppedLabels() map[string]string { return map[string]string{LabelStopped: "true"} }

// supervised reports whether the supervisor may ever restart the
// container: it has a policy, and the user did not stop it.
func supervised(labels map[string]string) bool {
	p, err := ParsePolicy(labels[LabelPolicy])
	return err == nil && p.Mode != No && !StoppedByUser(labels)
}

// decide is the supervisor's decision for a container whose task is
// stopped: whether to restart it, and the labels to record when it does.
func decide(labels map[string]string, exitStatus uint32) (map[string]string, bool) {
	p, err := ParsePolicy(labels[LabelPolicy])
	if err != nil {
		return nil, false
	}
	n := Restarts(labels)
	if !p.Restart(exitStatus, n, StoppedByUser(labels)) {
		return nil, false
	}
	return map[string]string{LabelCount: strconv.Itoa(n + 1)}, true
}

// Backoff spaces the restarts of a crashing task as docker does, so that
// a crash loop costs little CPU: Initial after the first exit, twice the
// previous delay after each further one, at most Max, and Initial again
// once the task had run for Reset.
type Backoff struct {
	Initial, Max, Reset time.Duration
}

// dockerBackoff is docker's: 100 ms, doubling, at most a minute, reset
// after 10 s of running.
func dockerBackoff() Backoff {
	return Backoff{Initial: 100 * time.Millisecond, Max: time.Minute, Reset: 10 * time.Second}
}

// Next is the delay before the next restart, given the previous delay
// (0: none yet) and how long the task ran this time.
func (b Backoff) Next(prev, ran time.Duration) time.Duration {
	if prev == 0 || ran >= b.Reset {
		return b.Initial
	}
	return min(2*prev, b.Max)
}
